"""``decoder_pipeline_manual_split_list`` at config time: checks, VPP from the length, the layout string.

The training itself is in tests/cpu/test_pipeline_flags.py; upstream's parser of the layout string
is exercised there (megatron-core reads what :func:`layout` writes).
"""

from __future__ import annotations

import pytest

from primus_runtime.errors import ConfigError
from primus_runtime.model import pipeline_split
from primus_runtime.model.pipeline_split import SplitError, layout, stages, virtual_size
from primus_runtime.trainer import options
from tests.runtime.test_trainer import cfg


@pytest.mark.parametrize(("split", "pp", "want"), [
    ([1, 3], 2, "Et|tttL"),
    ([2, 3, 2, 2, 2, 2, 2, 1], 4, "Ett|tt|tt|tt|ttt|tt|tt|tL"),  # the spec's rank-major example, chunk-major here
    ([0, 4], 2, "E|ttttL"),  # a stage with the embedding only
    ([7, 8, 8, 8, 8, 8, 8, 6], 8, "E" + "t" * 7 + "|" + "|".join(["t" * 8] * 6) + "|" + "t" * 6 + "L"),
])
def test_layout_string(split: list[int], pp: int, want: str) -> None:
    assert layout(split, pp) == want
    assert sum(stages(split, pp)) == sum(split)


@pytest.mark.parametrize(("split", "layers", "pp", "params", "message"), [
    ([1, 2], 4, 2, None, "places 3 layers but num_layers is 4"),
    ([1, 1, 2], 4, 2, None, "has 3 entries; it needs one per pipeline stage, virtual stages included: "
                            "pipeline_model_parallel_size (2) x the virtual pipeline size, e.g. 2 or 4"),
    ([4], 4, 1, None, "needs pipeline_model_parallel_size > 1 (it is 1)"),
    ([1, -1, 4], 4, 3, None, "has a negative layer count"),
    ([2, 0, 1, 1], 4, 2, None, "entry 1 (rank 0, model chunk 1) builds no layer"),
    ([1, True], 2, 2, None, "must be a non-empty list of layer counts"),
    ([], 0, 2, None, "must be a non-empty list of layer counts"),
    ([1, 3], 4, 2, {"num_layers_per_virtual_pipeline_stage": 1}, "unset num_layers_per_virtual_pipeline_stage (it is 1)"),
    ([1, 3], 4, 2, {"account_for_loss_in_pipeline_split": True}, "unset account_for_loss_in_pipeline_split"),
])
def test_refused(split: list, layers: int, pp: int, params: dict | None, message: str) -> None:
    with pytest.raises(SplitError) as info:
        virtual_size(split, layers, pp, params)
    assert message in str(info.value) and pipeline_split.FLAG in str(info.value)


def test_virtual_size_from_the_length() -> None:
    assert virtual_size([1, 3], 4, 2) == 1
    assert virtual_size([1, 2, 2, 1], 6, 2) == 2
    assert virtual_size([0, 4], 4, 2) == 1  # upstream's layout builds a stage without decoder layers


def test_the_trainer_takes_vpp_from_the_split() -> None:
    layout_of = options.parallel_layout
    assert layout_of(cfg(pipeline_model_parallel_size=2, num_layers=6,
                         decoder_pipeline_manual_split_list=[1, 2, 2, 1]).parallel, 2).vp == 2
    assert layout_of(cfg(pipeline_model_parallel_size=2, num_layers=4,
                         decoder_pipeline_manual_split_list=[1, 3]).parallel, 2).vp is None
    with pytest.raises(ConfigError, match="places 5 layers but num_layers is 4"):
        layout_of(cfg(pipeline_model_parallel_size=2, num_layers=4,
                      decoder_pipeline_manual_split_list=[2, 3]).parallel, 2)
