"""``decoder_pipeline_manual_split_list`` (spec M7): decoder layers per pipeline stage, by hand.

The list has one entry per (virtual) pipeline stage, rank-major as Primus writes it: entry
``rank * vpp + chunk`` is the number of layers that model chunk ``chunk`` of pipeline rank
``rank`` builds, so its length is ``pp`` (no virtual stages) or ``pp * vpp``; VPP is taken from the
length. megatron-core 0.16.1 expresses the same thing with its own ``pipeline_model_parallel_layout``
(``E`` embedding, ``t`` decoder layer, ``L`` loss, ``|`` between stages, stages listed chunk-major),
so the runtime maps the list onto it (:func:`layout`) and megatron-core builds the stages itself; a
primus-rewriter build of a release without the layout carries the ``decoder_pipeline_manual_split_list``
patch instead (docs/patch-notes.md).

Pure Python: every rule is checked when the config is read, before any process group exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FLAG = "decoder_pipeline_manual_split_list"
#: options that place layers on stages themselves, so cannot be combined with a manual split
#: (Megatron-LM's argument names, then megatron-core's field names)
CONFLICTS = ("num_layers_per_virtual_pipeline_stage", "decoder_first_pipeline_num_layers",
             "decoder_last_pipeline_num_layers", "num_layers_in_first_pipeline_stage",
             "num_layers_in_last_pipeline_stage", "account_for_embedding_in_pipeline_split",
             "account_for_loss_in_pipeline_split", "pipeline_model_parallel_layout")


class SplitError(ValueError):
    """The manual split does not fit the model or the pipeline."""


def virtual_size(split: Any, num_layers: int, pp: int, params: Mapping[str, Any] | None = None) -> int:
    """Check ``split`` against the model and the pipeline; return the virtual pipeline size it implies."""
    if not isinstance(split, Sequence) or isinstance(split, str) or not split or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in split):
        raise SplitError(f"{FLAG} must be a non-empty list of layer counts (integers), got {split!r}")
    if pp < 2:
        raise SplitError(f"{FLAG}={list(split)} needs pipeline_model_parallel_size > 1 (it is {pp})")
    for key in CONFLICTS:
        if params is not None and params.get(key) not in (None, False):
            raise SplitError(f"{FLAG} places every layer itself; unset {key} (it is {params[key]!r})")
    if len(split) % pp:
        raise SplitError(f"{FLAG} has {len(split)} entries; it needs one per pipeline stage, virtual stages "
                         f"included: pipeline_model_parallel_size ({pp}) x the virtual pipeline size, e.g. "
                         f"{pp} or {2 * pp}")
    if any(n < 0 for n in split):
        raise SplitError(f"{FLAG}={list(split)} has a negative layer count")
    if sum(split) != num_layers:
        raise SplitError(f"{FLAG}={list(split)} places {sum(split)} layers but num_layers is {num_layers}")
    vp = len(split) // pp
    empty = [i for i, n in enumerate(split) if n == 0]
    if empty and vp > 1:
        # a model chunk without layers has no state of its own, so the trainer's checkpoints
        # (one state per chunk) cannot be loaded into it; a whole stage without layers (no
        # virtual stages) keeps its embedding or output layer and works
        raise SplitError(f"{FLAG}={list(split)}: entry {empty[0]} (rank {empty[0] // vp}, model chunk "
                         f"{empty[0] % vp}) builds no layer; with virtual pipeline stages every model chunk "
                         f"needs at least one")
    return vp


def stages(split: Sequence[int], pp: int) -> list[int]:
    """Layers per stage in megatron's layout order (chunk-major: ``chunk * pp + rank``)."""
    vp = len(split) // pp
    return [split[rank * vp + chunk] for chunk in range(vp) for rank in range(pp)]


def layout(split: Sequence[int], pp: int) -> str:
    """megatron-core's ``pipeline_model_parallel_layout`` string for ``split``."""
    parts = ["t" * n for n in stages(split, pp)]
    parts[0] = "E" + parts[0]
    parts[-1] += "L"
    return "|".join(parts)
