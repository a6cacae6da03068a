"""Run tokens through the trainer's GPTModel loaded from a checkpoint, at any TP/PP; save the logits.

``python logits_probe.py EXP CKPT TOKENS OUT [--key value ...]`` as ranks of a job (gloo) or alone.
The model is built as the trainer builds it and loaded with megatron's dist_checkpointing, as the
trainer's ``finetune`` loads it; pipeline stages pass hidden states by send/recv, tensor-parallel
logits are gathered; the last stage's first rank of the first data-parallel replica writes the full logits to OUT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def main(exp: str, ckpt: str, tokens_file: str, out: str, *overrides: str) -> None:
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from primus_runtime.config.loader import load_experiment
    from primus_runtime.model.builder import build_gpt_model
    from primus_runtime.model.config_map import transformer_config
    from primus_runtime.trainer.checkpoint import iteration_dir, read_tracker

    params = load_experiment(Path(exp), list(overrides)).params
    os.environ.setdefault("RANK", "0"), os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1"), os.environ.setdefault("MASTER_PORT", "29511")
    torch.distributed.init_process_group("gloo")
    tp, pp = int(params["tensor_model_parallel_size"]), int(params["pipeline_model_parallel_size"])
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             expert_model_parallel_size=int(params["expert_model_parallel_size"]))
    model_parallel_cuda_manual_seed(1)
    config = transformer_config(params, use_cpu_initialization=True, perform_initialization=True)
    first, last = parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()
    model = build_gpt_model(params, config, pre_process=first, post_process=last)
    folder = iteration_dir(Path(ckpt), read_tracker(Path(ckpt)))
    meta = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True,
            "dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True)}
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict(metadata=meta)}, str(folder))
    model.load_state_dict(loaded["model"])
    model.eval()
    tokens = torch.load(tokens_file)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        if not first:
            hidden = torch.empty(tokens.shape[1], tokens.shape[0], config.hidden_size)
            torch.distributed.recv(hidden, parallel_state.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        output = model(tokens, positions, None)
        if not last:
            torch.distributed.send(output.contiguous(), parallel_state.get_pipeline_model_parallel_next_rank())
        else:
            logits = gather_from_tensor_model_parallel_region(output)[..., :int(params["vocab_size"])]
            if parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_data_parallel_rank() == 0:
                torch.save(logits.contiguous(), out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
