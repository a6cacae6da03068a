"""The iteration line, and the device-memory figures it carries (spec M11/M12).

    iteration        5/      10 | consumed samples: 20 | elapsed time per iteration (ms): 812.3 |
    learning rate: 9.045E-04 | global batch size:     4 | lm loss: 5.812E+00 | loss scale: 1.0 |
    grad norm: 1.234 | throughput per GPU (TFLOP/s/GPU): 0.1 | tokens per GPU (tokens/s/GPU): 157.6 | ...

Memory: on ROCm, ``rocm-smi --showmeminfo vram`` (labelled ``rocm mem``); on other GPUs the same
numbers from ``torch.cuda.mem_get_info`` (labelled ``device mem (torch.cuda.mem_get_info)``); on
CPU nothing, with one note. A fresh sample is taken at the log lines ``use_rocm_mem_info_iters``
names (every line with ``use_rocm_mem_info``), with the largest use over all ranks; other lines
repeat the last sample.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from primus_runtime.trainer.config import MemoryConfig

GIB = 2**30


def iteration_line(fields: Mapping[str, Any]) -> str:
    parts = [f"iteration {fields['iteration']:8d}/{fields['train_iters']:8d}",
             f"consumed samples: {fields['consumed']:12d}",
             f"elapsed time per iteration (ms): {fields['elapsed_ms']:.1f}",
             f"learning rate: {fields['lr']:.3E}",
             f"global batch size: {fields['global_batch']:5d}"]
    if fields.get("loss") is not None:
        parts.append(f"lm loss: {fields['loss']:.6E}")
    parts.append(f"loss scale: {fields['loss_scale']:.1f}")
    if fields.get("grad_norm") is not None:
        parts.append(f"grad norm: {fields['grad_norm']:.3f}")
    if fields.get("skipped"):
        parts.append("skipped: 1")
    if fields.get("tflops") is not None:
        parts.append(f"throughput per GPU (TFLOP/s/GPU): {fields['tflops']:.1f}")
        parts.append(f"tokens per GPU (tokens/s/GPU): {fields['tokens_per_gpu']:.1f}")
    if fields.get("memory"):
        parts.append(fields["memory"])
    return " | ".join(parts)


@dataclass
class MemorySample:
    source: str
    used: float  # GiB
    free: float
    total: float
    max_used: float
    max_rank: int

    def text(self) -> str:
        return (f"{self.source} usage/free/total/ratio: {self.used:.2f}/{self.free:.2f}/{self.total:.2f} GiB/"
                f"{self.used / self.total if self.total else 0.0:.2%} | max mem used over ranks: "
                f"{self.max_used:.2f} GiB (rank {self.max_rank})")


_ROCM_LINE = re.compile(r"VRAM Total (Used )?Memory \(B\):\s*(\d+)")


def _rocm_smi(device: int) -> tuple[float, float] | None:
    """(used, total) GiB from rocm-smi, or None when it cannot answer."""
    try:
        out = subprocess.run(["rocm-smi", "--showmeminfo", "vram", f"-d={device}"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    values = {bool(m.group(1)): int(m.group(2)) for m in _ROCM_LINE.finditer(out)}
    if True not in values or False not in values:
        return None
    return values[True] / GIB, values[False] / GIB


def local_memory() -> tuple[str, float, float] | None:
    """(label, used GiB, total GiB) of this rank's device, or None on CPU."""
    if not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    if torch.version.hip is not None:
        smi = _rocm_smi(device)
        if smi is not None:
            return "rocm mem (rocm-smi)", smi[0], smi[1]
    free, total = torch.cuda.mem_get_info(device)
    return "device mem (torch.cuda.mem_get_info)", (total - free) / GIB, total / GIB


def sample_memory() -> MemorySample | None:
    """Collective over all ranks: this rank's figures and the largest use anywhere."""
    local = local_memory()
    if local is None:
        return None
    label, used, total = local
    pair = torch.tensor([used, float(torch.distributed.get_rank())], dtype=torch.float64, device="cuda")
    # the max used, then the lowest rank that has it
    best = pair[:1].clone()
    torch.distributed.all_reduce(best, op=torch.distributed.ReduceOp.MAX)
    owner = torch.tensor([pair[1] if used >= float(best) else float("inf")], dtype=torch.float64, device="cuda")
    torch.distributed.all_reduce(owner, op=torch.distributed.ReduceOp.MIN)
    return MemorySample(label, used, total - used, total, float(best), int(owner))


def allocator_memory() -> str:
    """PyTorch's own figures for this rank (GPU only)."""
    if not torch.cuda.is_available():
        return ""
    return (f"mem allocated/max allocated/reserved (GiB): {torch.cuda.memory_allocated() / GIB:.2f}/"
            f"{torch.cuda.max_memory_allocated() / GIB:.2f}/{torch.cuda.memory_reserved() / GIB:.2f}")


class MemoryReport:
    """The memory part of the iteration line: owns ``use_rocm_mem_info`` and ``use_rocm_mem_info_iters``.

    :meth:`text` is called at every log line on every rank (a fresh sample is a collective).
    """

    def __init__(self, cfg: MemoryConfig) -> None:
        self.cfg = cfg
        self.on = cfg.log_throughput and (cfg.use_rocm_mem_info or bool(cfg.use_rocm_mem_info_iters))
        self._lines = 0
        self._sample: MemorySample | None = None

    def sample_due(self, line: int) -> bool:
        """Take a fresh device-memory sample at this (1-based) log line?"""
        return self.cfg.log_throughput and (self.cfg.use_rocm_mem_info or line in self.cfg.use_rocm_mem_info_iters)

    def note(self) -> str | None:
        """What to log once at the start, when the report is asked for but cannot be made."""
        if self.on and not torch.cuda.is_available():
            return "device memory report (use_rocm_mem_info): skipped, no GPU on this host"
        return None

    def text(self) -> str:
        self._lines += 1
        if not (self.on and torch.cuda.is_available()):
            return ""
        if self.sample_due(self._lines) or self._sample is None:
            self._sample = sample_memory()
        return " | ".join(x for x in (allocator_memory(), self._sample.text() if self._sample else "") if x)


def model_summary(chunks: list[Any], spec: str) -> list[str]:
    """What was built: the spec, chunks, parameters of this rank and their dtypes, each layer's MLP
    class (flags such as ``use_deprecated_20241209_moe_layer`` swap it) and, for MoE layers, the
    experts' class (``use_turbo_grouped_mlp`` swaps it)."""
    from megatron.core.utils import unwrap_model  # through DDP and Float16Module to the GPTModel

    layers = [layer for model in unwrap_model(chunks) for layer in model.decoder.layers]
    mlps = sorted({f"{type(layer.mlp).__module__}.{type(layer.mlp).__qualname__}" for layer in layers})
    experts = sorted({type(layer.mlp.experts).__qualname__ for layer in layers if hasattr(layer.mlp, "experts")})
    params = [p for chunk in chunks for p in chunk.parameters()]
    dtypes = ", ".join(sorted({str(p.dtype).removeprefix("torch.") for p in params}))
    lines = [f"model: GPTModel, {spec}, {len(chunks)} chunk(s), {sum(p.numel() for p in params)} parameters on this "
             f"rank ({dtypes})",
             f"model layers' MLP: {', '.join(mlps) or 'none on this rank'}"]
    if experts:
        lines.append(f"model layers' experts: {', '.join(experts)}")
    return lines
