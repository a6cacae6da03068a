"""The cpu-test flavor's source rewrites, one behaviour each, and the device module on CPU."""

from __future__ import annotations

import importlib.util
import textwrap
import time

import pytest
import torch

from rewriter.flavors.cpu_test import PAYLOAD, rewrite_source

IMPORT = "from megatron.core._primus import cuda as _primus_cuda  # cpu-test flavor\n"


def rewrite(src: str) -> str:
    return rewrite_source(textwrap.dedent(src))


def test_torch_cuda_attributes_go_through_the_device_module() -> None:
    out = rewrite("""
        import torch
        x = torch.empty(3, device=torch.cuda.current_device())
        torch.cuda.synchronize()
    """)
    assert "_primus_cuda.current_device()" in out and "_primus_cuda.synchronize()" in out
    assert "torch.cuda" not in out
    assert IMPORT in out


def test_import_goes_after_docstring_and_future_imports() -> None:
    out = rewrite('''
        """Doc."""
        from __future__ import annotations
        import torch
        torch.cuda.synchronize()
    ''')
    lines = out.strip().splitlines()
    assert lines[:3] == ['"""Doc."""', "from __future__ import annotations", IMPORT.strip()]


def test_from_torch_cuda_import() -> None:
    out = rewrite("from torch.cuda import _lazy_call, _lazy_init\nimport torch.cuda.nvtx as nvtx\n")
    assert "from megatron.core._primus.cuda import _lazy_call, _lazy_init" in out
    assert "import torch.cuda.nvtx as nvtx" in out  # importable on CPU-only torch: left alone


def test_dot_cuda_calls_and_is_cuda() -> None:
    out = rewrite("y = x.cuda()\nz = x.cuda(non_blocking=True)\nif y.is_cuda:\n    pass\n")
    assert "y = _primus_cuda.to_device(x)" in out
    assert "z = _primus_cuda.to_device(x, non_blocking=True)" in out
    assert "if _primus_cuda.is_on_device(y):" in out


def test_device_strings() -> None:
    out = rewrite("""
        a = torch.zeros(2, device="cuda")
        b = torch.device("cuda", torch.cuda.current_device())
        c = torch.device('cuda')
        ok = param.grad.type() == 'torch.cuda.FloatTensor'
        name = "torch.cuda.synchronize"
        msg = "uses cuda here"
    """)
    assert 'device=_primus_cuda.DEVICE' in out
    assert "b = _primus_cuda.make_device(_primus_cuda.current_device())" in out
    assert "c = _primus_cuda.make_device()" in out
    assert "_primus_cuda.type_name('torch.cuda.FloatTensor')" in out
    assert '"torch.cuda.synchronize"' in out and '"uses cuda here"' in out  # not device strings


def test_optional_imports_are_bound_in_the_fallback() -> None:
    out = rewrite("""
        try:
            from te import gemm, permute as fused_permute
            HAVE_TE = True
        except ImportError:
            HAVE_TE = False

        try:
            from apex import norm
        except ImportError:
            norm = None

        def f():
            try:
                from x import y
            except ImportError:
                pass
    """)
    assert "    HAVE_TE = False\n    gemm = fused_permute = None" in out
    assert out.count("norm = None") == 1  # already bound: untouched
    assert "y = None" not in out  # inside a function: untouched


def test_untouched_module_is_returned_as_is() -> None:
    src = "import torch\n\ndef f(x):\n    return x + 1\n"
    assert rewrite_source(src) == src


def test_second_application_changes_nothing() -> None:
    once = rewrite("""
        try:
            from te import gemm
        except ImportError:
            pass
        x = torch.empty(1, device=torch.cuda.current_device()).cuda()
        flag = x.is_cuda and x.device.type == "cuda"
    """)
    assert rewrite_source(once) == once


def load_shim(monkeypatch: pytest.MonkeyPatch, cuda: bool):  # type: ignore[no-untyped-def]
    """The device module as a host with (``cuda``) or without GPUs imports it: it decides once, at
    import, from ``torch.cuda.is_available()``, so either side is testable on any host."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    spec = importlib.util.spec_from_file_location(f"primus_cuda_shim_{cuda}", PAYLOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.undo()
    assert module.AVAILABLE is cuda
    return module


@pytest.fixture
def shim(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The CPU-only side (what CI runs), also on a host that has CUDA."""
    return load_shim(monkeypatch, cuda=False)


def test_on_a_gpu_host_every_name_is_torch_cudas(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA, the module adds nothing: names are ``torch.cuda``'s own and devices are CUDA
    devices (nothing here touches a GPU, so it holds on any host)."""
    gpu = load_shim(monkeypatch, cuda=True)
    assert gpu.DEVICE == "cuda"
    assert gpu.make_device() == torch.device("cuda") and gpu.make_device(3) == torch.device("cuda", 3)
    assert gpu.type_name("torch.cuda.FloatTensor") == "torch.cuda.FloatTensor"
    for name in ("current_device", "synchronize", "Stream", "Event", "manual_seed", "get_rng_state",
                 "memory_allocated", "MemPool", "nvtx", "default_generators"):
        assert getattr(gpu, name) is getattr(torch.cuda, name), name
    assert not gpu.is_on_device(torch.ones(1))  # a CPU tensor is not on the compute device


def test_shim_devices(shim) -> None:
    assert shim.DEVICE == "cpu" and not shim.is_available()
    assert shim.current_device() == torch.device("cpu") and shim.device_count() == 1
    t = torch.ones(2)
    assert torch.zeros(1, device=shim.current_device()).device.type == "cpu"
    assert shim.to_device(t, non_blocking=True) is t and shim.is_on_device(t)
    assert shim.make_device(3) == torch.device("cpu")
    assert shim.type_name("torch.cuda.FloatTensor") == t.type() == "torch.FloatTensor"


def test_shim_streams_and_events(shim) -> None:
    """One CPU stream (all streams equal, so megatron takes its main-stream path); waits and
    stream contexts do nothing; events measure wall time and refuse an unrecorded pair."""
    side = shim.Stream(priority=-1)
    assert side == shim.current_stream() == shim.default_stream() and hash(side) == hash(shim.Stream())
    assert side.priority == -1 and side.device == torch.device("cpu") and side.query()
    assert side != "stream"
    with shim.stream(side) as entered:
        assert entered is None
        side.wait_stream(shim.current_stream())
    start, end = shim.Event(enable_timing=True), shim.Event(enable_timing=True)
    with pytest.raises(RuntimeError, match="needs both events recorded"):
        start.elapsed_time(end)
    start.record()
    time.sleep(0.05)
    recorded = side.record_event(end)
    assert recorded is end and end.query()
    end.synchronize()
    assert start.elapsed_time(end) >= 50.0  # milliseconds, like CUDA events
    assert end.elapsed_time(start) < 0
    with shim.nvtx.range("x"):
        assert shim.nvtx.range_push("y") == 0 and shim.nvtx.range_pop() == 0


def test_shim_rng_is_the_cpu_generator(shim) -> None:
    """Seeding, saving and restoring the "CUDA" RNG acts on the CPU generator, reproducibly."""
    shim.manual_seed(7)
    state = shim.get_rng_state()
    a = torch.rand(3)
    shim.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)
    assert shim.default_generators[shim.current_device()] is torch.default_generator
    calls = []
    shim._lazy_call(lambda: calls.append(1))
    assert calls == [1]


def test_shim_cuda_only_features_fail_when_used(shim) -> None:
    with pytest.raises(RuntimeError, match="MemPool needs CUDA"):
        shim.MemPool()
    assert shim.memory_allocated() == 0 and shim.memory_stats() == {}
