"""The ZB-H1 order (patch_zero_bubble) against 1F1B's, replayed with unit costs (F = B = W = 1).

``zb_h1`` is the order the ZB-H1 schedule of the wheel runs on each pipeline rank (its docstring:
1F1B's forwards and backwards, and after each backward the oldest weight-gradient passes while
more than ``rank`` are pending); tests/cpu/test_zero_bubble.py checks that a real run dumps
exactly this order. Here the property that makes it worth running: its unit-cost bubble is
``(p - 1) / (3m + p - 1)``, a third of 1F1B's ``3 (p - 1)`` idle units per rank, while no rank
holds more than ``p`` microbatches between forward and weight gradient (1F1B's first stage).
"""

from __future__ import annotations

import pytest

from primus_runtime.timeline import bubbles
from primus_runtime.timeline.dump import Pass
from tests.runtime.test_pp_timeline import one_f_one_b


def zb_h1(pp: int, rank: int, m: int) -> list[tuple[str, int]]:
    """ZB-H1 on ``rank``: 1F1B's F/B order; after each B, W passes until at most ``rank`` are pending."""
    order: list[tuple[str, int]] = []
    next_w = 0
    for kind, mb in one_f_one_b(pp, rank, m):
        order.append((kind, mb))
        if kind == "B":
            while mb + 1 - next_w > rank:
                order.append(("W", next_w))
                next_w += 1
    return order + [("W", i) for i in range(next_w, m)]


def replay(order_of, pp: int, m: int) -> float:
    return bubbles.replay({r: tuple(Pass(k, 0, 0, mb, 0) for k, mb in order_of(pp, r, m)) for r in range(pp)})


@pytest.mark.parametrize("pp,m", [(2, 4), (2, 8), (4, 4), (4, 8), (4, 16), (8, 16)])
def test_zb_h1_has_a_third_of_the_1f1b_bubble(pp: int, m: int) -> None:
    zb, one_f_one_b_bubble = replay(zb_h1, pp, m), replay(one_f_one_b, pp, m)
    assert zb == pytest.approx((pp - 1) / (3 * m + pp - 1))
    # 1F1B's backward computes the weight gradients too: (p - 1) (F + B + W) idle units of 3m + that
    assert one_f_one_b_bubble == pytest.approx(3 * (pp - 1) / (3 * m + 3 * (pp - 1)))
    assert zb < one_f_one_b_bubble


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 8), (8, 16)])
def test_zb_h1_keeps_1f1b_peak_memory(pp: int, m: int) -> None:
    """Microbatches between their forward and their last weight-gradient pass, at most ``pp``."""
    for rank in range(pp):
        live = peak = 0
        for kind, _ in zb_h1(pp, rank, m):
            live += {"F": 1, "B": 0, "W": -1}[kind]
            peak = max(peak, live)
        assert peak <= pp
        assert sorted(zb_h1(pp, rank, m)) == sorted([(k, i) for k in "BFW" for i in range(m)])


def test_the_last_stage_runs_its_deferred_w_in_the_cool_down() -> None:
    assert zb_h1(2, 1, 4) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("W", 0), ("F", 2), ("B", 2), ("W", 1),
                              ("F", 3), ("B", 3), ("W", 2), ("W", 3)]
    assert zb_h1(2, 0, 4)[-2:] == [("B", 3), ("W", 3)]
