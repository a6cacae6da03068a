"""Options that ask for a library this host lacks get their portable equivalent, said in the log.

Primus's example configs are written for ROCm hosts with TransformerEngine and apex
(``cross_entropy_fusion_impl: te``, ``gradient_accumulation_fusion: true``). megatron.core fails
on such an option where the library is absent, in the middle of the first forward or while
building layers. The runtime instead runs the same experiment on the portable path that computes
the same function, and says which option it changed and why, once, when the model is built:

* ``cross_entropy_fusion_impl: te`` without TransformerEngine -> ``native``: megatron's own fused
  vocab-parallel cross-entropy (the same loss, computed in fewer passes over the logits).
* ``gradient_accumulation_fusion: true`` on the local layer spec without apex's
  ``fused_weight_gradient_mlp_cuda`` -> ``false``: the weight gradient is computed, then added
  to the fp32 main gradient (the same sum, in two steps).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Substitution:
    """One option this host cannot honour, and what runs instead."""

    key: str
    asked: Any
    used: Any
    why: str

    def __str__(self) -> str:
        return f"{self.key}: {self.asked!r} -> {self.used!r} ({self.why})"


def substitutions(params: Mapping[str, Any], *, have_te: bool, have_apex_wgrad: bool) -> list[Substitution]:
    """What :func:`resolve` changes for ``params`` on a host with (or without) these libraries."""
    found = []
    if params.get("cross_entropy_loss_fusion") and params.get("cross_entropy_fusion_impl") == "te" and not have_te:
        found.append(Substitution("cross_entropy_fusion_impl", "te", "native",
                                  "TransformerEngine is not installed; megatron's fused cross-entropy instead"))
    if params.get("gradient_accumulation_fusion") and not have_te and not have_apex_wgrad:
        found.append(Substitution("gradient_accumulation_fusion", True, False,
                                  "neither TransformerEngine nor apex's fused_weight_gradient_mlp_cuda is installed"))
    return found


def resolve(params: Mapping[str, Any], *, have_te: bool) -> dict[str, Any]:
    """``params`` with every option this host cannot honour replaced by its portable equivalent (logged)."""
    have_apex_wgrad = importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None
    resolved = dict(params)
    for change in substitutions(params, have_te=have_te, have_apex_wgrad=have_apex_wgrad):
        log.info("portable option: %s", change)
        resolved[change.key] = change.used
    return resolved
