"""The trainer's pure parts: derived settings, trainer flags' settings, FLOPs, logging levels, the sampler."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from primus_runtime.config.loader import load_experiment, resolve_model
from primus_runtime.errors import ConfigError
from primus_runtime.trainer import options
from primus_runtime.trainer.config import LoggingConfig, TrainerConfig
from primus_runtime.trainer.data import ConsumedSamplesSampler
from primus_runtime.trainer.flops import flops_per_token
from primus_runtime.trainer.logs import sink_levels
from primus_runtime.trainer.report import MemoryReport, iteration_line
from tests.runtime.trainer_helpers import EXAMPLE

WHO = options.Identity("team", "me", "exp", Path("/ws/exp"))


def params(**overrides: object) -> dict:
    return {**load_experiment(EXAMPLE).params, **overrides}


def cfg(**overrides: object) -> TrainerConfig:
    return TrainerConfig.from_params(params(**overrides))


def test_layout_and_batches() -> None:
    layout = options.parallel_layout(cfg(tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                                         num_layers=4, num_layers_per_virtual_pipeline_stage=1).parallel, 8)
    assert (layout.tp, layout.pp, layout.vp, layout.dp) == (2, 2, 2, 2)
    assert options.batch_plan(2, 16, 2) == options.Batches(16, 2, 4)
    assert options.batch_plan(2, None, 4).global_batch == 8
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        options.batch_plan(2, 6, 2)
    with pytest.raises(ConfigError, match="not divisible"):
        options.parallel_layout(cfg(tensor_model_parallel_size=3).parallel, 4)


def test_lr_schedule_counts_samples() -> None:
    s = options.lr_schedule(cfg(lr_warmup_iters=2, lr_decay_iters=None).schedule, train_iters=10, gbs=4)
    assert (s.warmup_steps, s.decay_steps, s.decay_style) == (8, 40, "cosine")
    s = options.lr_schedule(cfg(lr_warmup_fraction=0.25).schedule, train_iters=10, gbs=4)
    assert s.warmup_steps == 10


def test_trackers_follow_their_disable_flags() -> None:
    off = options.trackers(cfg().trackers, False, WHO)
    assert (off.tensorboard_dir, off.wandb, off.mlflow) == (None, None, None)
    on = options.trackers(cfg(disable_tensorboard=False, disable_wandb=False, disable_mlflow=False).trackers, False,
                          WHO)
    assert on.tensorboard_dir == Path("/ws/exp/tensorboard")
    assert on.wandb == {"project": "team_me", "name": "exp", "dir": "/ws/exp/wandb"}
    assert on.mlflow == {"run_name": "team_me", "experiment": "exp", "dir": "/ws/exp/mlflow"}
    # an explicit tensorboard_dir does not turn TensorBoard on; the torch profiler does
    assert options.trackers(cfg(tensorboard_dir="/tb").trackers, False, WHO).tensorboard_dir is None
    profiling = cfg(profile=True, use_pytorch_profiler=True)
    assert profiling.profiler.on and not cfg(profile=True).profiler.on
    profiled = options.trackers(profiling.trackers, profiling.profiler.on, WHO)
    assert profiled.tensorboard_dir == Path("/ws/exp/tensorboard") and profiled.notes


def test_auto_continue_train(tmp_path: Path) -> None:
    who = options.Identity("team", "me", "exp", tmp_path)
    fresh = options.checkpointing(cfg(auto_continue_train=True, finetune=True).checkpoint, who)
    assert fresh.save == tmp_path / "checkpoints" and fresh.load is None and fresh.finetune
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / options.TRACKER_FILE).write_text("4\n")
    resumed = options.checkpointing(cfg(auto_continue_train=True, finetune=True, no_load_optim=True,
                                        no_load_rng=True).checkpoint, who)
    assert resumed.load == tmp_path / "checkpoints"
    assert not (resumed.finetune or resumed.no_load_optim or resumed.no_load_rng)
    assert len(resumed.notes) == 5  # the default save folder, and each of the four overrides
    plain = options.checkpointing(cfg(finetune=True).checkpoint, who)
    assert plain.save is None and plain.finetune


def test_disable_last_saving_skips_only_the_last_iteration() -> None:
    ckpt = options.checkpointing(cfg(save="/s", save_interval=5, disable_last_saving=True).checkpoint, WHO)
    assert [i for i in range(1, 11) if options.should_save(ckpt, i, 10, final=False)] == [5]
    assert not options.should_save(ckpt, 10, 10, final=True)
    keep = options.checkpointing(cfg(save="/s", save_interval=5).checkpoint, WHO)
    assert [i for i in range(1, 11) if options.should_save(keep, i, 10, final=False)] == [5, 10]


def test_memory_sampling_iterations() -> None:
    default = MemoryReport(cfg().memory)
    assert default.on
    assert [i for i in range(1, 6) if default.sample_due(i)] == [1, 2]
    every = MemoryReport(cfg(use_rocm_mem_info=True).memory)
    assert [i for i in range(1, 6) if every.sample_due(i)] == [1, 2, 3, 4, 5]
    assert not MemoryReport(cfg(use_rocm_mem_info_iters=[]).memory).on
    assert not MemoryReport(cfg(log_throughput=False).memory).on


@pytest.mark.parametrize(("model", "seq", "vocab", "gflops"), [
    # the per-token numbers of shared/reference/runtime-anchors.md §1.1 (Megatron's causal formula)
    ("llama3_8B", 8192, 128256, 51.47),
    ("llama3_8B", 4096, 128256, 48.25),
    ("llama2_7B", 4096, 32000, 42.86),
    ("mixtral_8x7B_v0.1", 4096, 32000, 79.71),
    ("deepseek_v2_lite", 4096, 102400, 16.39),
])
def test_flops_per_token_matches_megatron(model: str, seq: int, vocab: int, gflops: float) -> None:
    assert round(flops_per_token(resolve_model(model), seq, vocab) / 1e9, 2) == gflops


def test_sink_levels() -> None:
    assert sink_levels(LoggingConfig(None, "DEBUG", "WARNING"), {}) == (10, 30)
    assert sink_levels(LoggingConfig("ERROR", "DEBUG", "INFO"), {}) == (40, 40)
    assert sink_levels(LoggingConfig(None, "DEBUG", "WARNING"), {"PRIMUS_LOG_LEVEL": "DEBUG"})[1] == logging.DEBUG
    assert sink_levels(LoggingConfig(None, "DEBUG", "INFO"), {"PRIMUS_LOG_LEVEL": "ERROR"})[1] == logging.INFO


def test_sampler_continues_at_consumed_samples() -> None:
    whole = [list(ConsumedSamplesSampler(16, 0, 2, r, 2)) for r in range(2)]
    resumed = [list(ConsumedSamplesSampler(16, 8, 2, r, 2)) for r in range(2)]
    assert whole[0][:2] == [[0, 1], [4, 5]] and whole[1][:2] == [[2, 3], [6, 7]]
    assert [w[2:] for w in whole] == resumed


def test_iteration_line() -> None:
    line = iteration_line({"iteration": 100, "train_iters": 10000, "consumed": 51200, "elapsed_ms": 1234.5,
                           "lr": 1.5e-5, "global_batch": 512, "loss": 3.456, "loss_scale": 1.0, "grad_norm": 2.345,
                           "tflops": 400.0, "tokens_per_gpu": 9000.0, "memory": ""})
    assert line.startswith("iteration      100/   10000 | ")
    for part in ("elapsed time per iteration (ms): 1234.5", "learning rate: 1.500E-05", "global batch size:   512",
                 "lm loss: 3.456000E+00", "loss scale: 1.0", "grad norm: 2.345",
                 "throughput per GPU (TFLOP/s/GPU): 400.0", "tokens per GPU (tokens/s/GPU): 9000.0"):
        assert part in line


def test_mock_data_needs_no_tokenizer() -> None:
    """The zoo names hub tokenizers (nothing is downloaded); mock data takes the vocabulary size."""
    from primus_runtime.trainer.data import token_ids

    params = {**resolve_model("llama3.2_1B"), "mock_data": True}
    ids = token_ids(params)
    assert (ids.vocab_size, ids.eod) == (128256, 128255)
    with pytest.raises(ConfigError, match="real data tokenizer_model"):
        token_ids({"mock_data": False, "tokenizer_model": None})


def test_context_parallel_is_refused() -> None:
    with pytest.raises(ConfigError, match="context_parallel_size=2: the trainer does not split sequences"):
        options.parallel_layout(cfg(context_parallel_size=2).parallel, 2)
