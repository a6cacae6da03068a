"""Construct megatron's TE linears against a stand-in TransformerEngine and report the kwargs.

The stand-in package is written to a temporary folder and put first on ``sys.path``: its
``Linear``/``LayerNormLinear`` record what megatron passes to them, and either accept
``keep_fp8_weight_transpose_cache`` (like ROCm TransformerEngine) or do not (like NVIDIA's).
Everything else megatron touches at import is a ``MagicMock``.

usage: python te_probe.py OUT.json rocm|nvidia true|false
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import tempfile
import textwrap
import types
import warnings
from pathlib import Path
from unittest.mock import MagicMock

STAND_IN = '''
from unittest.mock import MagicMock

import torch

RECORDED = []  # the keyword arguments megatron passed, one dict per constructed layer
ACCEPTS = {accepts}


class _Recorder(torch.nn.Module):
    def __init__(self, in_features, out_features, passed):
        super().__init__()
        RECORDED.append(passed)
        self.weight = torch.nn.Parameter(torch.zeros(out_features, in_features))


if ACCEPTS:  # like ROCm TransformerEngine: an explicit keep_fp8_weight_transpose_cache argument
    class Linear(_Recorder):
        def __init__(self, in_features, out_features, keep_fp8_weight_transpose_cache=None, **kwargs):
            if keep_fp8_weight_transpose_cache is not None:
                kwargs["keep_fp8_weight_transpose_cache"] = keep_fp8_weight_transpose_cache
            super().__init__(in_features, out_features, kwargs)

    LayerNormLinear = type("LayerNormLinear", (Linear,), {{}})
else:  # like NVIDIA TransformerEngine: no such argument, no **kwargs
    class Linear(_Recorder):
        def __init__(self, in_features, out_features, bias=True, params_dtype=None, init_method=None,
                     sequence_parallel=False, fuse_wgrad_accumulation=False, tp_group=None, tp_size=1,
                     get_rng_state_tracker=None, rng_tracker_name=None, parallel_mode=None, return_bias=False,
                     device=None, ub_name=None, symmetric_ar_type=None, eps=1e-5, return_layernorm_output=False,
                     zero_centered_gamma=False, normalization="LayerNorm"):
            super().__init__(in_features, out_features, {{}})

    LayerNormLinear = type("LayerNormLinear", (Linear,), {{}})


def __getattr__(name):
    return MagicMock(name=name)
'''


def write_stand_in(root: Path, accepts: bool) -> None:
    pkg = root / "transformer_engine"
    (pkg / "pytorch").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        '__version__ = "2.9.0"\nfrom unittest.mock import MagicMock\nfrom . import pytorch\n'
        "def __getattr__(name):\n    return MagicMock(name=name)\n"
    )
    (pkg / "pytorch" / "__init__.py").write_text(textwrap.dedent(STAND_IN.format(accepts=accepts)))
    (pkg / "pytorch" / "fp8.py").write_text(
        "from unittest.mock import MagicMock\nFP8GlobalStateManager = MagicMock()\nfp8_autocast = MagicMock()\n"
        "def __getattr__(name):\n    return MagicMock(name=name)\n"
    )


class _MockSubmodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any ``transformer_engine.*`` submodule the stand-in does not define is a mock module."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith("transformer_engine.") and importlib.machinery.PathFinder.find_spec(name, path) is None:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = lambda attr: MagicMock(name=attr)
        module.__path__ = []  # a package, so deeper submodules resolve too
        return module

    def exec_module(self, module):
        return None


def main(out: str, kind: str, flag: bool) -> None:
    tmp = Path(tempfile.mkdtemp())
    write_stand_in(tmp, accepts=kind == "rocm")
    sys.path.insert(0, str(tmp))
    sys.meta_path.append(_MockSubmodules())
    import torch
    from probe_common import start_single_process

    start_single_process()
    import transformer_engine.pytorch as te_pytorch
    from megatron.core.extensions import transformer_engine as ext
    from megatron.core.transformer.transformer_config import TransformerConfig

    assert ext.HAVE_TE, "the stand-in TransformerEngine was not picked up"
    settings = dict(num_layers=1, hidden_size=16, num_attention_heads=4, use_cpu_initialization=True)
    if flag:
        settings["no_fp8_weight_transpose_cache"] = True
    config = TransformerConfig(**settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for cls in (ext.TELinear, ext.TELayerNormColumnParallelLinear, ext.TELinear):
            common = dict(config=config, init_method=torch.nn.init.zeros_, bias=True, skip_bias_add=False)
            if cls is ext.TELinear:
                cls(16, 32, parallel_mode="duplicated", skip_weight_param_allocation=False, **common)
            else:
                cls(16, 32, gather_output=False, is_expert=False, skip_weight_param_allocation=False, **common)
    messages = [str(w.message) for w in caught if "no_fp8_weight_transpose_cache" in str(w.message)]
    passed = [kw.get("keep_fp8_weight_transpose_cache", "absent") for kw in te_pytorch.RECORDED]
    Path(out).write_text(json.dumps({"passed": passed, "warnings": messages}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "true")
