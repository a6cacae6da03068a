"""The training loop: ``python -m primus_runtime train --exp <yaml> [--key value ...]``.

megatron-core has no ``megatron/training``, so the loop is ours, built from megatron.core's own
parts. One module per job, in the order a run uses them:

- :mod:`.options`     settings derived from the flat params (layout, batches, schedule, paths);
                      pure Python, no torch
- :mod:`.logs`        per-rank log files and the console, at module_base.yaml's sink levels
- :mod:`.setup`       process group, parallel state, seeds, the model chunks, DDP, optimizer
                      and learning-rate schedule
- :mod:`.data`        mock or indexed GPT datasets, the consumed-samples sampler, iterators
- :mod:`.step`        forward step and loss, one training step, evaluation
- :mod:`.checkpoint`  dist_checkpointing save/load, atomic on disk
- :mod:`.fatal`       one rank's fatal error ends every rank of the job, with its message
- :mod:`.flops`       Megatron's FLOPs-per-iteration formula (for TFLOP/s)
- :mod:`.report`      the iteration line, memory figures (``use_rocm_mem_info``)
- :mod:`.trackers`    TensorBoard, Weights & Biases, MLflow
- :mod:`.profiler`    the torch profiler (``profile``, ``disable_profiler_activity_cpu``)
- :mod:`.pp_warmup`   one synthetic step per pipeline stage before training (``pp_warmup``)
- :mod:`.loop`        the run, top to bottom
- :mod:`.main`        the command: resolve the experiment, check flags, launch the loop

Importing this package stays light; the modules that need torch or megatron.core import it
themselves.
"""
