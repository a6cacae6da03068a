"""The training loop: ``python -m primus_runtime train --exp <yaml> [--key value ...]``.

megatron-core has no ``megatron/training``, so the loop is ours, built from megatron.core's own
parts. One module per job, in the order a run uses them:

- :mod:`.config`        the typed, frozen view of the resolved params, one section per part
- :mod:`.options`       settings derived from it (layout, batches, schedule, trackers, where to
                        save and load); pure Python, no torch
- :mod:`.process_group` the torchrun process group, destroyed on every way out
- :mod:`.logs`          per-rank log files and the console, at module_base.yaml's sink levels
- :mod:`.setup`         joining the process group, parallel state, seeds, the model chunks, DDP, optimizer
                        and learning-rate schedule
- :mod:`.checkpointer`  when to save and where to resume from (``auto_continue_train``,
                        ``disable_last_saving``), over :mod:`.checkpoint` (dist_checkpointing,
                        atomic on disk)
- :mod:`.feed`          this rank's datasets and iterators, over :mod:`.data` (mock or indexed
                        GPT datasets, the consumed-samples sampler)
- :mod:`.fatal`         one rank's fatal error ends every rank of the job, with its message
- :mod:`.evaluation`    validation every ``eval_interval`` iterations
- :mod:`.pp_warmup`     one synthetic step per pipeline stage before training (``pp_warmup``),
                        with :mod:`.rng` putting every random state back
- :mod:`.step`          forward step and loss, one (timed) training step, evaluation
- :mod:`.pp_data`       ``dump_pp_data``: each training step recorded, the schedule dump written at the end
- :mod:`.metrics`       the iteration line, metrics.jsonl and :mod:`.trackers` (TensorBoard,
                        Weights & Biases, MLflow); :mod:`.flops` for TFLOP/s, :mod:`.report`
                        for the line's text and memory figures (``use_rocm_mem_info``)
- :mod:`.profiler`      the torch profiler (``profile``, ``disable_profiler_activity_cpu``)
- :mod:`.gemm_tuning`   Primus's three GEMM tuning stages (``PRIMUS_HIPBLASLT_TUNING_STAGE``) by TunableOp
- :mod:`.loop`          the run, top to bottom
- :mod:`.main`          the command: resolve the experiment, check flags, launch the loop

Importing this package stays light; the modules that need torch or megatron.core import it
themselves.
"""
