"""Exact parameter counts of zoo models, from megatron.core's own modules on the meta device.

The full model is built in this one process (world size 1, no tensor/pipeline/expert split) with
every weight on the ``meta`` device, so even DeepSeek-V3 costs no memory. Tied embeddings count
once (``Module.parameters`` yields a shared tensor once); buffers such as DeepSeek-V3's expert
bias are not parameters. The count does not depend on the kernels: it always uses the local
layer spec and sequential experts, whose weights have the same shapes as TE's and grouped GEMM's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from primus_runtime.errors import PrimusRuntimeError

#: the single-process, meta-device build: one rank holds everything and nothing is initialised
#: (``params`` counts it; ``convert`` asks it for the checkpoint layout)
WHOLE_MODEL_ON_META: dict[str, Any] = dict(
    tensor_model_parallel_size=1, pipeline_model_parallel_size=1, expert_model_parallel_size=1,
    expert_tensor_parallel_size=None, context_parallel_size=1, num_layers_per_virtual_pipeline_stage=None,
    sequence_parallel=False, moe_grouped_gemm=False, use_cpu_initialization=True, perform_initialization=False,
    init_model_with_meta_device=True,
)


def count_parameters(params: Mapping[str, Any]) -> int:
    """The number of parameters of the whole model ``params`` describes."""
    import torch

    from primus_runtime.model.builder import build_gpt_model
    from primus_runtime.model.config_map import transformer_config

    config = transformer_config(params, **WHOLE_MODEL_ON_META)
    with world_of_one(), torch.device("meta"):
        model = build_gpt_model(params, config, use_te=False)
        return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def world_of_one() -> Iterator[None]:
    """A gloo world of one process with megatron's parallel state, unless the caller has them.

    Whatever this sets up it tears down again; an existing world is used only if every parallel
    size is 1 (a sharded model would be counted per rank).
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    own_world = not dist.is_initialized()
    if own_world:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    own_state = not parallel_state.model_parallel_is_initialized()
    try:
        if own_state:
            parallel_state.initialize_model_parallel()
        elif (parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_pipeline_model_parallel_world_size(),
              parallel_state.get_expert_model_parallel_world_size()) != (1, 1, 1):
            raise PrimusRuntimeError("count_parameters needs tensor, pipeline and expert parallel size 1; "
                                     "count in a separate process (python -m primus_runtime params)")
        yield
    finally:
        if own_state:
            parallel_state.destroy_model_parallel()
        if own_world:
            dist.destroy_process_group()


def main(argv: Sequence[str]) -> int:
    """``python -m primus_runtime params NAME...``: one ``name  count`` line per model, or JSON."""
    from primus_runtime.config.loader import resolve_model

    parser = argparse.ArgumentParser(prog="python -m primus_runtime params", description=main.__doc__)
    parser.add_argument("models", nargs="+", metavar="MODEL", help="zoo name (llama3_8B) or model YAML file")
    parser.add_argument("--json", action="store_true", help="print {name: exact count} as JSON")
    args = parser.parse_args(argv)
    counts = {name: count_parameters(resolve_model(_as_file(name))) for name in args.models}
    if args.json:
        print(json.dumps(counts, indent=1))
    else:
        width = max(len(name) for name in counts)
        for name, count in counts.items():
            print(f"{name:<{width}}  {count / 1e9:8.3f}B  ({count:,})")
    return 0


def _as_file(name: str) -> str:
    """Zoo names may omit ``.yaml``: ``llama3.1_8B`` is ``llama3.1_8B.yaml``."""
    return name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
