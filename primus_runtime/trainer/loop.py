"""The run, top to bottom: set up, resume, train with logging/eval/saves, save last, tear down.

Each trainer option is read once, typed (:class:`.config.TrainerConfig`), by the part it
changes: :class:`.checkpointer.Checkpointer` (saving, resuming, auto-continue, last saving),
:class:`.metrics.Metrics` (the iteration line, metrics.jsonl, the trackers),
:class:`.report.MemoryReport`, :class:`.evaluation.Evaluation`, :mod:`.pp_warmup`, :mod:`.pp_data`
(``dump_pp_data``) and :mod:`.profiler`; :mod:`.gemm_tuning` applies ``PRIMUS_HIPBLASLT_TUNING_STAGE`` first (stage 2
tunes and trains nothing). The process group, log files, trackers and metrics file are context managers
on one ``ExitStack``: they are closed on every path out of the run, errors included.
"""

from __future__ import annotations

from contextlib import ExitStack

from primus_runtime.config.loader import Experiment
from primus_runtime.errors import ConfigError
from primus_runtime.trainer import (
    data,
    gemm_tuning,
    logs,
    options,
    pp_data,
    pp_warmup,
    process_group,
    profiler,
    report,
    setup,
    step,
)
from primus_runtime.trainer.checkpointer import Checkpointer
from primus_runtime.trainer.config import TrainerConfig
from primus_runtime.trainer.evaluation import Evaluation
from primus_runtime.trainer.feed import Feed
from primus_runtime.trainer.flops import flops_per_iteration
from primus_runtime.trainer.metrics import Metrics


def run(exp: Experiment) -> int:
    """Train ``exp`` (every rank calls this); 0 on success, an exception otherwise."""
    cfg = TrainerConfig.from_params(exp.params)
    train_iters, seq = cfg.run.train_iters, cfg.run.seq_length
    if not train_iters:
        raise ConfigError("train_iters is null: set how many iterations to train")
    who = options.Identity(exp.work_group, exp.user_name, exp.exp_name, exp.exp_root)
    with ExitStack() as resources:
        rank, world = resources.enter_context(process_group.joined(exp.params))
        log = resources.enter_context(logs.session(cfg.logging, exp.exp_root, rank, world))
        log.info("experiment %s: %s (writes to %s)", exp.exp_name, exp.path, exp.exp_root)
        if not gemm_tuning.prepare(exp, rank, log):  # PRIMUS_HIPBLASLT_TUNING_STAGE=2 tunes, trains nothing
            return 0
        layout = options.parallel_layout(cfg.parallel, world)
        batches = options.batch_plan(cfg.run.micro_batch_size, cfg.run.global_batch_size, layout.dp)
        schedule = options.lr_schedule(cfg.schedule, train_iters, batches.global_batch)
        tracking = options.trackers(cfg.trackers, cfg.profiler.on, who)
        checkpointer = Checkpointer(cfg.checkpoint, who, exp.params, train_iters)
        for note in (*tracking.notes, *checkpointer.notes):
            log.warning(note)
        log.info("layout: %s; batches: %s", layout, batches)
        setup.init_parallel_state(layout, exp.params)
        setup.set_seeds(cfg.run.seed)
        log.info(data.ensure_dataset_helpers(exp.params, rank))
        model = setup.build_model(exp.params, layout)
        for line in report.model_summary(model.chunks, model.spec):
            log.info(line)
        optimizer = setup.build_optimizer(exp.params, model)
        scheduler = setup.build_scheduler(optimizer, schedule)
        state = checkpointer.load(model.chunks, optimizer, scheduler)
        feed = Feed(exp.params, cfg.run, layout, batches, len(model.chunks))
        train_data = feed.iterators(feed.train, state.consumed_train_samples)
        device = setup.device()
        evaluation = Evaluation(cfg.run, feed, device)
        pp_warmup.run(cfg.warmup, model.chunks, optimizer, model.config, layout, batches, seq, model.padded_vocab,
                      device)
        memory = report.MemoryReport(cfg.memory)
        metrics = resources.enter_context(Metrics(
            cfg.metrics, tracking, exp.params, exp.exp_root, active=rank == world - 1, world=world, batches=batches,
            seq_length=seq, train_iters=train_iters, memory=memory,
            flops=flops_per_iteration(exp.params, batches.global_batch, seq, model.padded_vocab)))
        if memory.note():
            log.info(memory.note())
        with profiler.make(cfg.profiler, tracking.tensorboard_dir, exp.exp_name, rank) as prof:
            while state.iteration < train_iters:
                result, elapsed = step.timed_train_step(model.chunks, optimizer, scheduler, train_data, batches, seq,
                                                        device)
                state.iteration += 1
                state.consumed_train_samples += batches.global_batch
                prof.step()
                if metrics.due(state.iteration):
                    metrics.iteration(state, result, elapsed, optimizer)
                if evaluation.due(state.iteration):
                    metrics.validation(state.iteration, evaluation.run(model.chunks, state))
                checkpointer.after_step(state, model.chunks, optimizer, scheduler)
        checkpointer.finish(state, model.chunks, optimizer, scheduler)
        dumped = pp_data.write(model.config, exp.exp_root, layout, batches, train_iters)
        if dumped is not None:
            log.info("dump_pp_data: wrote %s", dumped)
        log.info("training done: %d iterations", state.iteration)
    return 0
