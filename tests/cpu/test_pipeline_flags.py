"""The pipeline flags in real CPU training (gloo, forked ranks): ``dump_pp_data`` and
``decoder_pipeline_manual_split_list``.

``decoder_pipeline_manual_split_list``: PP=2 with an uneven split, and PP=2 x VPP=2, train like
one process (on 0.16.1 through upstream's pipeline_model_parallel_layout).

``dump_pp_data``: a PP=2 run writes one file per pipeline rank and ``config.json``; every
microbatch's forward and backward appears once per rank, in megatron's 1F1B order; the times are
ordered and inside the iteration; the losses are bit-identical to the same run without the flag;
``pp-timeline`` draws it (the PNG is decoded, not sized) and computes the bubble fraction.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from primus_runtime.cli import main
from primus_runtime.timeline import bubbles
from primus_runtime.timeline.dump import load
from tests.cpu.test_training import curves, ok, same_training
from tests.runtime.test_pp_timeline import one_f_one_b

pytestmark = pytest.mark.slow

STEPS = 3
MICROBATCHES = 4  # 8 sequences per step, 2 per microbatch, one data-parallel rank


def dumped(result: dict) -> Path:
    return Path(result["exp_root"]) / "pp_data"


def test_dump_pp_data_records_the_1f1b_schedule(train) -> None:
    plain = ok(train("patched", nproc=2, pp=2, steps=STEPS))
    run = ok(train("patched", nproc=2, pp=2, steps=STEPS, overrides={"dump_pp_data": True}))
    assert curves(run) == curves(plain), "recording changed the training"
    folder = dumped(run)
    config = json.loads((folder / "config.json").read_text())
    assert config["pp_size"] == 2 and config["num_mbs"] == MICROBATCHES and config["train_iters"] == STEPS
    assert config["clock"] == "perf_counter_ns"
    for rank in (0, 1):
        data = json.loads((folder / f"pp_rank_{rank}.json").read_text())
        assert sorted(data, key=int) == [str(i) for i in range(1, STEPS + 1)]  # evaluation is not recorded
        for entry in data.values():
            assert sorted(entry["fwd_minibatch"]) == sorted(entry["bwd_minibatch"]) == list(range(MICROBATCHES))
            assert entry["fwd_chunk"] == entry["bwd_chunk"] == [0] * MICROBATCHES
            assert entry["wgrad_start"] == []
            passes = sorted([(s, e, "F", mb) for s, e, mb in zip(entry["fwd_start"], entry["fwd_end"],
                                                                 entry["fwd_minibatch"])]
                            + [(s, e, "B", mb) for s, e, mb in zip(entry["bwd_start"], entry["bwd_end"],
                                                                   entry["bwd_minibatch"])])
            assert [(k, mb) for _, _, k, mb in passes] == one_f_one_b(2, rank, MICROBATCHES)
            assert all(0 <= s < e <= entry["total"] for s, e, _, _ in passes)
            assert all(a[1] <= b[0] for a, b in zip(passes, passes[1:])), "passes of one rank overlap"
            assert entry["memory"] > 0  # peak RSS on a CPU


def test_pp_timeline_draws_a_real_dump(train, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image

    folder = dumped(ok(train("patched", nproc=2, pp=2, steps=STEPS, overrides={"dump_pp_data": True})))
    assert main(["pp-timeline", str(folder), "-o", str(tmp_path / "timeline.png")]) == 0
    printed = capsys.readouterr().out
    # the dumped order is 1F1B on 2 stages with 4 microbatches: (p - 1) / (m + p - 1) = 1/5
    assert f"bubble fraction, iteration {STEPS} (order with unit costs): 0.200" in printed
    measured = float(printed.split(f"bubble fraction, iteration {STEPS} (measured): ")[1].split()[0])
    assert 0 < measured < 1
    print(f"measured bubble fraction on CPU: {measured:.3f} (unit-cost 0.200)")
    image = matplotlib.image.imread(tmp_path / "timeline.png")
    pixels = image.reshape(-1, image.shape[2])
    assert (pixels[:, 2] > pixels[:, 0] + 0.15).mean() > 0.01  # forward passes (blue)
    assert (pixels[:, 1] > pixels[:, 0] + 0.1).mean() > 0.01  # backward passes (green)
    assert main(["pp-timeline", str(folder), "-o", str(tmp_path / "timeline.html")]) == 0
    assert "<svg" in (tmp_path / "timeline.html").read_text()


@pytest.mark.parametrize(("layers", "split"), [(4, [1, 3]), (4, [0, 4]), (6, [1, 2, 2, 1])],
                         ids=["pp2", "pp2-empty-first-stage", "pp2-vpp2"])
def test_manual_split_trains_like_one_process(train, layers: int, split: list[int]) -> None:
    """PP=2 with layers [1, 3] (no virtual stages), [0, 4] (rank 0 holds only the embedding: upstream's
    layout builds an empty stage), and PP=2 x VPP=2 with [1, 2, 2, 1] (rank 0 builds
    1 then 2 layers, rank 1 builds 2 then 1; megatron's interleaved 1F1B): the same losses as one
    process from the same weights. On megatron-core 0.16.1 the list becomes upstream's
    pipeline_model_parallel_layout (the patch is retired there)."""
    model = {"num_layers": layers}
    single = ok(train("patched", steps=STEPS, overrides=model, from_start=True))
    run = ok(train("patched", nproc=2, pp=2, steps=STEPS, from_start=True, start_overrides=model,
                   overrides={**model, "decoder_pipeline_manual_split_list": split, "dump_pp_data": True}))
    same_training(run, single)
    log = (Path(run["exp_root"]) / "logs" / "rank_0.log").read_text()
    vp = len(split) // 2
    assert f"vp={vp if vp > 1 else None}" in log  # the trainer took the virtual pipeline size from the split
    # the dump (on here too) shows every microbatch once per model chunk on each rank
    dump = load(dumped(run))
    for rank, iterations in dump.ranks.items():
        passes = iterations[STEPS].passes
        for kind in "FB":
            ids = sorted((p.microbatch, p.chunk) for p in passes if p.kind == kind)
            assert ids == [(mb, c) for mb in range(MICROBATCHES) for c in range(vp)], (rank, kind)
    # the order megatron ran has the textbook bubble of (interleaved) 1F1B: (p - 1) / (v m + p - 1)
    assert bubbles.unit_cost(dump, STEPS) == pytest.approx(1 / (vp * MICROBATCHES + 1))
