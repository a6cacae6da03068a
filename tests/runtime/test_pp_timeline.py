"""``pp-timeline`` on dumps written here: the bubble fractions, the picture, and refused folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from primus_runtime.cli import main
from primus_runtime.timeline import bubbles
from primus_runtime.timeline.dump import DumpError, Pass, load


def one_f_one_b(pp: int, rank: int, m: int) -> list[tuple[str, int]]:
    """Megatron's non-interleaved 1F1B order on ``rank``: warm-up forwards, pairs, cool-down backwards."""
    warmup = min(pp - rank - 1, m)
    order = [("F", i) for i in range(warmup)]
    for i in range(m - warmup):
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", i) for i in range(m - warmup, m)]


def write_dump(folder: Path, pp: int, m: int, step: float = 10.0, busy: float = 8.0, iterations: int = 2) -> Path:
    """A dump in the dump_pp_data layout: pass k of each rank runs from k*step to k*step+busy ms."""
    folder.mkdir(parents=True, exist_ok=True)
    for rank in range(pp):
        entry: dict = {"total": 0.0, "memory": 0.5}
        for name in ("fwd", "bwd", "wgrad"):
            for key in ("start", "end", "minibatch", "chunk"):
                entry[f"{name}_{key}"] = []
        order = one_f_one_b(pp, rank, m)
        for k, (kind, mb) in enumerate(order):
            name = "fwd" if kind == "F" else "bwd"
            entry[f"{name}_start"].append(k * step)
            entry[f"{name}_end"].append(k * step + busy)
            entry[f"{name}_minibatch"].append(mb)
            entry[f"{name}_chunk"].append(0)
        entry["total"] = len(order) * step
        data = {str(i + 1): entry for i in range(iterations)}
        (folder / f"pp_rank_{rank}.json").write_text(json.dumps(data))
    (folder / "config.json").write_text(json.dumps({"pp_size": pp, "vp_size": 1, "num_mbs": m}))
    return folder


@pytest.mark.parametrize(("pp", "m"), [(2, 4), (4, 8), (4, 4), (3, 1)])
def test_unit_cost_bubble_of_1f1b_is_the_textbook_value(pp: int, m: int) -> None:
    """(p - 1) / (m + p - 1): a property of the order alone."""
    orders = {r: tuple(Pass(k, 0, 0, mb, 0) for k, mb in one_f_one_b(pp, r, m)) for r in range(pp)}
    assert bubbles.replay(orders) == pytest.approx((pp - 1) / (m + pp - 1))


def test_unit_cost_counts_weight_gradient_passes_and_virtual_stages() -> None:
    """Two ranks, one microbatch, two chunks: F on stages 0,1,2,3 then B back down, each followed by W.
    Stage s runs on rank s % 2, so every pass waits for the other rank: 12 passes in 12 units on 2 ranks."""
    rank0 = (Pass("F", 0, 0, 0, 0), Pass("F", 0, 0, 0, 1), Pass("B", 0, 0, 0, 1), Pass("W", 0, 0, 0, 1),
             Pass("B", 0, 0, 0, 0), Pass("W", 0, 0, 0, 0))
    rank1 = (Pass("F", 0, 0, 0, 0), Pass("F", 0, 0, 0, 1), Pass("B", 0, 0, 0, 1), Pass("W", 0, 0, 0, 1),
             Pass("B", 0, 0, 0, 0), Pass("W", 0, 0, 0, 0))
    # critical path F0 F1 F2 F3 B3 B2 B1 B0 W0 = 9 units; 12 passes on 2 ranks -> 1 - 12/18
    assert bubbles.replay({0: rank0, 1: rank1}) == pytest.approx(1 - 12 / 18)


def test_an_order_that_cannot_run_is_refused() -> None:
    """Rank 1 wants the backward of microbatch 1 before its forward reached it: a deadlock, not a number."""
    orders = {0: (Pass("F", 0, 0, 0, 0), Pass("B", 0, 0, 0, 0)), 1: (Pass("B", 0, 0, 0, 0), Pass("F", 0, 0, 0, 0))}
    with pytest.raises(DumpError, match="cannot run: every rank waits"):
        bubbles.replay(orders)


def test_measured_bubble_is_idle_time_over_iteration_time(tmp_path: Path) -> None:
    dump = load(write_dump(tmp_path / "d", pp=2, m=4, step=10.0, busy=8.0))
    result = bubbles.measured(dump, dump.iterations)
    assert result.fraction == pytest.approx(0.2)
    assert result.per_rank == pytest.approx({0: 0.2, 1: 0.2})


def test_png_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image

    folder = write_dump(tmp_path / "d", pp=4, m=8)
    assert main(["pp-timeline", str(folder), "-o", str(tmp_path / "t.png")]) == 0
    printed = capsys.readouterr().out
    assert "bubble fraction, iteration 2 (order with unit costs): 0.273" in printed  # 3/11
    assert "bubble fraction, iteration 2 (measured): 0.200" in printed
    image = matplotlib.image.imread(tmp_path / "t.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 500
    colours = {tuple(px) for px in image.reshape(-1, image.shape[2])[::97].round(2).tolist()}
    assert len(colours) > 5, "the picture is (nearly) blank"
    blue = (image[..., 2] > image[..., 0] + 0.15).mean()  # forward passes are blue
    assert blue > 0.02
    assert main(["pp-timeline", str(folder), "-o", str(tmp_path / "t.html"), "--iteration", "1"]) == 0
    page = (tmp_path / "t.html").read_text()
    assert "<svg" in page and "bubble fraction, iteration 1 (measured)" in page and "0.273" in page


@pytest.mark.parametrize(("damage", "message"), [
    ("missing", "no such directory"),
    ("empty", "no pp_rank_<r>.json files"),
    ("corrupt", r"pp_rank_1.json:1:\d+: not valid JSON"),
    ("lengths", "fwd_start, fwd_end, fwd_minibatch and fwd_chunk have 4, 3, 4 and 4 entries"),
    ("rank", "pp_rank_1.json is missing"),
    ("backwards", "fwd pass 0 starts at 5.0 ms and ends at 1.0 ms"),
])
def test_broken_dumps_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str,
                                  message: str) -> None:
    folder = tmp_path / "d"
    if damage != "missing":
        write_dump(folder, pp=2, m=4)
    rank1 = folder / "pp_rank_1.json"
    if damage == "empty":
        for f in folder.iterdir():
            f.unlink()
    elif damage == "corrupt":
        rank1.write_text(rank1.read_text()[:100])
    elif damage == "rank":
        rank1.unlink()
    elif damage in ("lengths", "backwards"):
        data = json.loads(rank1.read_text())
        if damage == "lengths":
            data["1"]["fwd_end"].pop()
        else:
            data["1"]["fwd_start"][0], data["1"]["fwd_end"][0] = 5.0, 1.0
        rank1.write_text(json.dumps(data))
    assert main(["pp-timeline", str(folder), "-o", str(tmp_path / "t.png")]) == 4
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "t.png").exists()


def test_unknown_output_format_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_dump(tmp_path / "d", pp=2, m=4)
    assert main(["pp-timeline", str(folder), "-o", str(tmp_path / "t.jpg")]) == 4
    assert "the suffix must be one of .png, .html, .htm" in capsys.readouterr().err
