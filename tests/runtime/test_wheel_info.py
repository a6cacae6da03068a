"""primus_runtime refuses a cpu-test megatron-core on a host with GPUs, unless told to."""

from __future__ import annotations

import pytest

from primus_runtime.wheel_info import ALLOW_CPU_TEST_ENV, WheelFlavorError, WheelInfo, require_usable


def info(flavor: str) -> WheelInfo:
    return WheelInfo(version=f"0.16.1+primus.v0.4.0{'.cputest' if flavor == 'cpu-test' else ''}", patched=True,
                     manifest={"flavor": flavor, "patchset": {"version": "v0.4.0"}, "flags": []})


def test_cpu_test_wheel_on_a_gpu_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_CPU_TEST_ENV, raising=False)
    with pytest.raises(WheelFlavorError, match="cpu-test build .* install the default wheel, or set"):
        require_usable(info("cpu-test"), cuda_available=True)


def test_explicit_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    require_usable(info("cpu-test"), cuda_available=True, allow_cpu_test=True)
    monkeypatch.setenv(ALLOW_CPU_TEST_ENV, "1")
    require_usable(info("cpu-test"), cuda_available=True)


def test_allowed_where_it_belongs() -> None:
    require_usable(info("cpu-test"), cuda_available=False, allow_cpu_test=False)
    require_usable(info("default"), cuda_available=True, allow_cpu_test=False)
    require_usable(WheelInfo(version="0.16.1", patched=False, manifest=None), cuda_available=True)
