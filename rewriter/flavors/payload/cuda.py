"""The device module of the cpu-test flavor: ``torch.cuda`` where CUDA exists, CPU stand-ins elsewhere.

Shipped as ``megatron/core/_primus/cuda.py`` in wheels built with ``--flavor cpu-test``; every
``torch.cuda.X``, ``from torch.cuda import X``, ``x.cuda()``, ``torch.device("cuda", i)`` and ``"cuda"`` string of
megatron-core is rewritten to go through it. With CUDA available every name is ``torch.cuda``'s
own. Without it:

* the device is ``"cpu"`` (``current_device()`` is ``torch.device("cpu")``), one device;
* streams and events are objects with the same methods that do nothing (work on CPU is already
  ordered; all streams are one); events still measure elapsed time; ``x.is_cuda`` asks whether
  ``x`` is on the compute device;
* the "CUDA" random number generator is the CPU default generator, so megatron's RNG tracker
  keeps its semantics (named, seeded, forked states, reproducible runs);
* memory queries answer zero, NVTX ranges are no-ops;
* CUDA graphs and memory pools raise, naming the feature, when used.

Any other name falls through to ``torch.cuda`` (``amp``, ``OutOfMemoryError`` …).
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

AVAILABLE: bool = torch.cuda.is_available()
#: the device type megatron's "cuda" strings become
DEVICE: str = "cuda" if AVAILABLE else "cpu"


def make_device(index: Any = None) -> torch.device:
    """``torch.device("cuda", index)``, or the CPU device."""
    if AVAILABLE:
        return torch.device("cuda") if index is None else torch.device("cuda", index)
    return torch.device("cpu")


def is_on_device(tensor: Any) -> bool:
    """``tensor.is_cuda``: is the tensor on the compute device (the CPU, in a CPU-only run)?"""
    if AVAILABLE:
        return bool(tensor.is_cuda)
    return tensor.device.type == "cpu"


def type_name(name: str) -> str:
    """A ``"torch.cuda.XTensor"`` type string, or its CPU counterpart ``"torch.XTensor"``."""
    return name if AVAILABLE else name.replace("torch.cuda.", "torch.", 1)


def to_device(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    """``tensor.cuda(...)``, or ``tensor`` moved to the CPU with the same keyword options."""
    if AVAILABLE:
        return tensor.cuda(*args, **kwargs)
    return tensor.to("cpu", non_blocking=kwargs.get("non_blocking", False))


if AVAILABLE:

    def __getattr__(name: str) -> Any:
        return getattr(torch.cuda, name)

else:

    def __getattr__(name: str) -> Any:
        return getattr(torch.cuda, name)

    def is_available() -> bool:
        return False

    def current_device() -> torch.device:
        """The CPU device itself: megatron passes this as ``device=`` (an index would mean CUDA)."""
        return torch.device("cpu")

    def device_count() -> int:
        return 1

    def set_device(device: Any) -> None:
        return None

    def synchronize(device: Any = None) -> None:
        return None

    def empty_cache() -> None:
        return None

    def memory_allocated(device: Any = None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    def memory_stats(device: Any = None) -> dict[str, int]:
        return {}

    def reset_peak_memory_stats(device: Any = None) -> None:
        return None

    def mem_get_info(device: Any = None) -> tuple[int, int]:
        return (0, 0)

    def get_device_properties(device: Any = None) -> types.SimpleNamespace:
        return types.SimpleNamespace(name="cpu", total_memory=0, major=0, minor=0, multi_processor_count=1)

    def get_device_capability(device: Any = None) -> tuple[int, int]:
        return (0, 0)

    def get_device_name(device: Any = None) -> str:
        return "cpu"

    def utilization(device: Any = None) -> int:
        return 0

    temperature = power_draw = clock_rate = utilization

    class Event:
        """A CUDA event's interface; records wall time so ``elapsed_time`` still measures."""

        def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
            self._time: float | None = None

        def record(self, stream: Any = None) -> None:
            self._time = time.perf_counter()

        def wait(self, stream: Any = None) -> None:
            return None

        def synchronize(self) -> None:
            return None

        def query(self) -> bool:
            return True

        def elapsed_time(self, end: Event) -> float:
            if self._time is None or end._time is None:
                raise RuntimeError("elapsed_time needs both events recorded")
            return (end._time - self._time) * 1000.0

    class Stream:
        """A CUDA stream's interface; CPU work is already ordered, so every wait is a no-op.

        There is one CPU "stream": all streams compare equal, so code that checks whether it
        runs on a side stream takes the main-stream path.
        """

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Stream)

        def __hash__(self) -> int:
            return 0

        def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
            self.device = torch.device("cpu")
            self.priority = priority

        def wait_stream(self, stream: Any) -> None:
            return None

        def wait_event(self, event: Any) -> None:
            return None

        def record_event(self, event: Event | None = None) -> Event:
            event = event or Event()
            event.record(self)
            return event

        def synchronize(self) -> None:
            return None

        def query(self) -> bool:
            return True

    ExternalStream = Stream
    _DEFAULT_STREAM = Stream()

    def current_stream(device: Any = None) -> Stream:
        return _DEFAULT_STREAM

    default_stream = current_stream

    def stream(stream: Any = None) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def set_stream(stream: Any) -> None:
        return None

    class device(contextlib.nullcontext):  # noqa: N801 - torch.cuda.device's name
        """``with torch.cuda.device(i):`` does nothing on one CPU device."""

        def __init__(self, device: Any = None) -> None:
            super().__init__()

    # The "CUDA" generator is the CPU default generator: seeding, state save/restore and
    # megatron's RNG tracker forks behave as on a GPU, reproducibly.
    class _Generators(tuple[Any, ...]):
        """Indexed by a device index or by ``current_device()``: always the CPU generator."""

        def __getitem__(self, index: Any) -> Any:
            return torch.default_generator

    default_generators = _Generators((torch.default_generator,))

    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(new_state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(new_state)

    def manual_seed(seed: int) -> None:
        torch.default_generator.manual_seed(seed)

    manual_seed_all = manual_seed

    def initial_seed() -> int:
        return torch.initial_seed()

    random = types.SimpleNamespace(get_rng_state=get_rng_state, set_rng_state=set_rng_state,
                                   manual_seed=manual_seed, manual_seed_all=manual_seed_all)

    def _lazy_call(callable: Callable[[], Any], **kwargs: Any) -> None:
        callable()

    def _lazy_init() -> None:
        return None

    @contextlib.contextmanager
    def _nvtx_range(msg: str, *args: Any, **kwargs: Any) -> Iterator[None]:
        yield

    nvtx = types.SimpleNamespace(range_push=lambda msg: 0, range_pop=lambda: 0, mark=lambda msg: None,
                                 range=_nvtx_range)

    HalfTensor, FloatTensor, BFloat16Tensor = torch.HalfTensor, torch.FloatTensor, torch.BFloat16Tensor
    DoubleTensor, LongTensor, IntTensor = torch.DoubleTensor, torch.LongTensor, torch.IntTensor
    ByteTensor, BoolTensor = torch.ByteTensor, torch.BoolTensor

    class _NeedsCuda:
        """CUDA-only features: a clear error when used, not when megatron merely names them."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"{type(self).__name__} needs CUDA; the cpu-test build runs without it")

    MemPool = type("MemPool", (_NeedsCuda,), {})
    CUDAGraph = type("CUDAGraph", (_NeedsCuda,), {})
    graph = type("graph", (_NeedsCuda,), {})

    def use_mem_pool(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("use_mem_pool needs CUDA; the cpu-test build runs without it")

    graph_pool_handle = use_mem_pool
