"""The packages' public API: ``__all__`` names what tests, benchmarks and tools may import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["rewriter", "primus_runtime", "primus_yaml"])
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    exports = getattr(module, "_EXPORTS", None)
    if exports is not None:
        assert sorted(module.__all__) == sorted(exports)
    for name in module.__all__:
        assert not name.startswith("_")
        try:
            getattr(module, name)
        except ModuleNotFoundError as exc:  # model code needs megatron-core, which a test host may lack
            assert exc.name == "megatron", f"{package}.{name}: {exc}"


def test_importing_the_packages_stays_light() -> None:
    """The API is imported on first use: ``import rewriter`` loads no libcst, ``import
    primus_runtime`` no torch."""
    code = ("import sys, rewriter, primus_runtime; "
            "print(sorted(m for m in ('libcst', 'torch', 'megatron') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
