"""Types of the trainer options whose default is ``null``, and choices of enumerated ones.

Every other option's type is its default's type (configs/modules/pre_trainer.yaml). A type is
one of bool, int, float, str, list, dict, or several joined by ``|``. Primus flags are not here:
their types and choices come from the flag registry (configs/flags.yaml).
"""

from __future__ import annotations

NULLABLE: dict[str, str] = {
    "sink_level": "str",
    "train_iters": "int",
    "global_batch_size": "int",
    "lr_decay_iters": "int",
    "lr_warmup_fraction": "float",
    "loss_scale": "float",
    "num_layers_per_virtual_pipeline_stage": "int",
    "expert_tensor_parallel_size": "int",
    "recompute_granularity": "str",
    "recompute_method": "str",
    "recompute_num_layers": "int",
    "data_path": "str|list",
    "train_data_path": "str|list",
    "valid_data_path": "str|list",
    "test_data_path": "str|list",
    "data_cache_path": "str",
    "save": "str",
    "load": "str",
    "save_interval": "int",
    "tensorboard_dir": "str",
    "wandb_project": "str",
    "wandb_exp_name": "str",
    "wandb_save_dir": "str",
    "wandb_entity": "str",
    "mlflow_run_name": "str",
    "mlflow_experiment_name": "str",
}

_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

CHOICES: dict[str, tuple[str, ...]] = {
    "sink_level": _LEVELS,
    "file_sink_level": _LEVELS,
    "stderr_sink_level": _LEVELS,
    "optimizer": ("adam", "sgd"),
    "lr_decay_style": ("constant", "linear", "cosine", "inverse-square-root"),
    "weight_decay_incr_style": ("constant", "linear", "cosine"),
    "distributed_backend": ("nccl", "gloo"),
    "recompute_granularity": ("full", "selective"),
    "recompute_method": ("uniform", "block"),
    "ckpt_format": ("torch", "torch_dist"),
    "cross_entropy_fusion_impl": ("native", "te"),
}
