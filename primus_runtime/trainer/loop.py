"""The run, top to bottom: set up, resume, train with logging/eval/saves, save last, tear down."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from primus_runtime.config.loader import Experiment
from primus_runtime.errors import ConfigError
from primus_runtime.trainer import checkpoint, data, logs, options, pp_warmup, profiler, report, setup, step
from primus_runtime.trainer.flops import flops_per_iteration
from primus_runtime.trainer.trackers import Writers


def run(exp: Experiment) -> int:
    params = exp.params
    if not params.get("train_iters"):
        raise ConfigError("train_iters is null: set how many iterations to train")
    train_iters, seq = int(params["train_iters"]), int(params["seq_length"])
    rank, world = setup.init_distributed(params)
    who = options.Identity(exp.work_group, exp.user_name, exp.exp_name, exp.exp_root)
    log = logs.setup(params, exp.exp_root, rank, world)
    log.info("experiment %s: %s (writes to %s)", exp.exp_name, exp.path, exp.exp_root)
    layout = options.parallel_layout(params, world)
    batches = options.batch_plan(params, layout.dp)
    schedule = options.lr_schedule(params, train_iters, batches.global_batch)
    tracking = options.trackers(params, who)
    ckpt = options.checkpointing(params, who)
    for note in (*tracking.notes, *ckpt.notes):
        log.warning(note)
    log.info("layout: %s; batches: %s", layout, batches)
    checkpoint.check_save_dir(ckpt)

    setup.init_parallel_state(layout, params)
    setup.set_seeds(int(params.get("seed", 1234)))
    from megatron.core import parallel_state

    log.info(data.ensure_dataset_helpers(params, rank))
    model = setup.build_model(params, layout)
    log.info("model: GPTModel, %s, %d chunk(s), %d parameters on this rank", model.spec, len(model.chunks),
             sum(p.numel() for c in model.chunks for p in c.parameters()))
    optimizer = setup.build_optimizer(params, model)
    scheduler = setup.build_scheduler(optimizer, schedule)
    state = checkpoint.load(ckpt, model.chunks, optimizer, scheduler, params)

    stages = [(parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=i if layout.vp else None),
               parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=i if layout.vp else None))
              for i in range(len(model.chunks))]
    needs_data = any(first or last for first, last in stages)
    sizes = data.split_sizes(train_iters, batches.global_batch, int(params.get("eval_interval") or 0),
                             int(params.get("eval_iters") or 0))
    train_ds, valid_ds, _ = data.build_datasets(params, data.token_ids(params), sizes, needs_data, layout.dp)
    dp_rank = parallel_state.get_data_parallel_rank()
    workers = int(params.get("num_workers", 0))

    def iterators(dataset: Any, consumed: int) -> Any:
        its = [data.loader(dataset, consumed, batches.micro_batch, dp_rank, layout.dp, workers)
               if (first or last) and dataset is not None else None for first, last in stages]
        return its if len(its) > 1 else its[0]

    train_data = iterators(train_ds, state.consumed_train_samples)
    device = setup.device()
    if params.get("pp_warmup"):
        pp_warmup.run(model.chunks, optimizer, model.config, layout, batches, seq, model.padded_vocab, device)

    last_rank = rank == world - 1
    writers = Writers(tracking, params, active=last_rank)
    metrics = open(exp.exp_root / "logs" / "metrics.jsonl", "a", encoding="utf-8") if last_rank else None
    flops = flops_per_iteration(params, batches.global_batch, seq, model.padded_vocab)
    mem_on, mem_sample, log_index = options.memory_report_on(params), None, 0
    if mem_on and not torch.cuda.is_available():
        log.info("device memory report (use_rocm_mem_info): skipped, no GPU on this host")
    window = options.profile_window(params)
    saved_at = None
    with profiler.make(params, window, tracking.tensorboard_dir, exp.exp_name, rank) as prof:
        while state.iteration < train_iters:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            began = time.perf_counter()
            result = step.train_step(model.chunks, optimizer, scheduler, train_data, batches, seq, device)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - began
            state.iteration += 1
            state.consumed_train_samples += batches.global_batch
            prof.step()
            if state.iteration % int(params.get("log_interval", 1)) == 0:
                log_index += 1
                memory = ""
                if mem_on and torch.cuda.is_available():
                    if options.memory_sample_due(params, log_index) or mem_sample is None:
                        mem_sample = report.sample_memory()
                    memory = " | ".join(x for x in (report.allocator_memory(), mem_sample.text() if mem_sample else "")
                                        if x)
                fields = {"iteration": state.iteration, "train_iters": train_iters,
                          "consumed": state.consumed_train_samples, "elapsed_ms": 1000 * elapsed,
                          "lr": optimizer.param_groups[0]["lr"], "global_batch": batches.global_batch,
                          "loss": result.loss, "loss_scale": float(optimizer.get_loss_scale()),
                          "grad_norm": result.grad_norm, "skipped": result.skipped,
                          "tflops": flops / (elapsed * world * 1e12) if params.get("log_throughput", True) else None,
                          "tokens_per_gpu": batches.global_batch * seq / (elapsed * world), "memory": memory}
                if last_rank:
                    log.info(report.iteration_line(fields), extra=logs.CONSOLE)
                    record = {k: fields[k] for k in ("iteration", "consumed", "elapsed_ms", "lr", "loss",
                                                     "grad_norm", "tflops", "tokens_per_gpu")}
                    if torch.cuda.is_available():
                        record["max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    writers.scalars({"lm loss": result.loss, "learning-rate": fields["lr"],
                                     "grad-norm": result.grad_norm, "loss-scale": fields["loss_scale"],
                                     "throughput/tflops-per-gpu": fields["tflops"]}, state.iteration)
            eval_interval, eval_iters = int(params.get("eval_interval") or 0), int(params.get("eval_iters") or 0)
            if valid_ds is not None and eval_interval and eval_iters and state.iteration % eval_interval == 0:
                valid = iterators(valid_ds, state.consumed_valid_samples)
                loss = step.evaluate(model.chunks, valid, batches, eval_iters, seq, device)
                state.consumed_valid_samples += eval_iters * batches.global_batch
                if last_rank:
                    log.info(f"validation loss at iteration {state.iteration} | lm loss value: {loss:.6E}",
                             extra=logs.CONSOLE)
                    writers.scalars({"lm loss validation": loss}, state.iteration)
            if options.should_save(ckpt, state.iteration, train_iters, final=False):
                checkpoint.save(ckpt, state.iteration, state, model.chunks, optimizer, scheduler, params)
                saved_at = state.iteration
    if saved_at != state.iteration and options.should_save(ckpt, state.iteration, train_iters, final=True):
        checkpoint.save(ckpt, state.iteration, state, model.chunks, optimizer, scheduler, params)
    elif ckpt.save is not None and ckpt.disable_last_saving:
        log.info("disable_last_saving: no checkpoint of the last iteration (%d)", state.iteration)
    writers.close()
    if metrics is not None:
        metrics.close()
    log.info("training done: %d iterations", state.iteration)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0
