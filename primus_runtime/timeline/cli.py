"""``python -m primus_runtime pp-timeline DUMP_DIR -o timeline.html|timeline.png [--iteration N]``.

Prints the bubble fractions (measured over every recorded iteration and for the drawn one, and
the unit-cost one of the drawn iteration's order) and writes the picture; the format follows the
output's suffix.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from primus_runtime.timeline import bubbles, draw
from primus_runtime.timeline.dump import DumpError, load

FORMATS = {".png": "png", ".html": "html", ".htm": "html"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m primus_runtime pp-timeline",
                                description="Draw a dump_pp_data folder: the pipeline schedule per rank, bubbles "
                                            "shaded, with the bubble fraction.")
    p.add_argument("dump_dir", metavar="DUMP_DIR", help="the dump_pp_data folder (pp_rank_<r>.json, config.json)")
    p.add_argument("-o", "--output", required=True, help="timeline.html or timeline.png")
    p.add_argument("--iteration", type=int, help="iteration to draw (default: the last one recorded)")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    out = Path(args.output)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise DumpError(f"-o {out}: the suffix must be one of {', '.join(FORMATS)}")
    dump = load(Path(args.dump_dir))
    iterations = dump.iterations
    chosen = iterations[-1] if args.iteration is None else args.iteration
    if chosen not in iterations:
        raise DumpError(f"--iteration {chosen}: the dump has iterations {iterations[0]}..{iterations[-1]}")
    overall = bubbles.measured(dump, iterations)
    this = bubbles.measured(dump, [chosen])
    unit = bubbles.unit_cost(dump, chosen) if dump.has_ids() else None
    rows = [
        ("ranks", str(len(dump.ranks))),
        ("microbatches", str(dump.config.get("num_mbs", "?"))),
        ("iterations recorded", f"{iterations[0]}..{iterations[-1]}"),
        (f"bubble fraction, iteration {chosen} (measured)", f"{this.fraction:.3f}"),
        ("bubble fraction, all iterations (measured)", f"{overall.fraction:.3f}"),
        (f"bubble fraction, iteration {chosen} (order with unit costs)",
         "n/a (no microbatch ids)" if unit is None else f"{unit:.3f}"),
    ]
    rows += [(f"rank {r}: bubble fraction, iteration time, peak memory",
              f"{this.per_rank[r]:.3f}, {its[chosen].total:.1f} ms, {its[chosen].memory:.2f} GiB")
             for r, its in sorted(dump.ranks.items())]
    title = f"pipeline schedule, iteration {chosen}: bubble fraction {this.fraction:.3f} ({dump.folder})"
    fig = draw.figure(dump, chosen, title)
    try:
        if fmt == "png":
            draw.save_png(fig, out)
        else:
            draw.save_html(fig, out, title, rows)
    except OSError as exc:
        raise DumpError(f"-o {out}: cannot write: {exc.strerror}") from None
    for key, value in rows:
        print(f"{key}: {value}")
    print(f"wrote {out}")
    return 0
