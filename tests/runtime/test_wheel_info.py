"""primus_runtime refuses a cpu-test megatron-core on a host with GPUs, unless told to."""

from __future__ import annotations

import itertools

import pytest

from primus_runtime.wheel_info import ALLOW_CPU_TEST_ENV, WheelFlavorError, WheelInfo, require_usable


def info(flavor: str | None) -> WheelInfo:
    """A patched wheel of ``flavor``, or (None) an unpatched megatron-core without a manifest."""
    if flavor is None:
        return WheelInfo(version="0.16.1", patched=False, manifest=None)
    return WheelInfo(version=f"0.16.1+primus.v0.4.0{'.cputest' if flavor == 'cpu-test' else ''}", patched=True,
                     manifest={"flavor": flavor, "patchset": {"version": "v0.4.0"}, "flags": []})


def refused(wheel: WheelInfo, cuda_available: bool, allow_cpu_test: bool | None) -> bool:
    try:
        require_usable(wheel, cuda_available=cuda_available, allow_cpu_test=allow_cpu_test)
    except WheelFlavorError:
        return True
    return False


def test_cpu_test_wheel_on_a_gpu_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_CPU_TEST_ENV, raising=False)
    with pytest.raises(WheelFlavorError, match="cpu-test build .* install the default wheel, or set"):
        require_usable(info("cpu-test"), cuda_available=True)


@pytest.mark.parametrize(("value", "allowed"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_permission_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, allowed: bool) -> None:
    """The variable set to anything but empty or "0" allows the cpu-test wheel on a GPU host."""
    monkeypatch.setenv(ALLOW_CPU_TEST_ENV, value)
    assert refused(info("cpu-test"), cuda_available=True, allow_cpu_test=None) is not allowed


def test_explicit_permission_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_CPU_TEST_ENV, "1")
    assert refused(info("cpu-test"), cuda_available=True, allow_cpu_test=False)
    monkeypatch.delenv(ALLOW_CPU_TEST_ENV)
    assert not refused(info("cpu-test"), cuda_available=True, allow_cpu_test=True)


def test_refused_exactly_where_it_does_not_belong() -> None:
    """Over every wheel (cpu-test, default, unpatched), host and permission, only a cpu-test wheel
    on a GPU host without permission is refused."""
    for flavor, cuda, allow in itertools.product(("cpu-test", "default", None), (True, False), (True, False)):
        want = flavor == "cpu-test" and cuda and not allow
        assert refused(info(flavor), cuda, allow) is want, (flavor, cuda, allow)
