"""Draw one iteration of a dump with matplotlib: a row per pipeline rank, time across.

Forward passes are blue, backward green, weight-gradient passes orange, each labelled with its
microbatch (and ``.chunk`` with virtual stages); the idle stretches inside each rank's iteration
(the bubbles) are shaded grey and hatched. PNG through matplotlib's Agg renderer; the HTML page
holds the same figure as inline SVG with a table of the numbers beside it.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

from primus_runtime.timeline.bubbles import idle_spans
from primus_runtime.timeline.dump import Dump, DumpError, Pass

COLOURS = {"F": "#4C72B0", "B": "#55A868", "W": "#DD8452"}
NAMES = {"F": "forward", "B": "backward", "W": "weight gradient"}
BUBBLE = "#d9d9d9"


def _label(p: Pass, chunks: bool) -> str:
    if p.microbatch is None or p.microbatch < 0:
        return ""
    return f"{p.microbatch}.{p.chunk}" if chunks else str(p.microbatch)


def figure(dump: Dump, iteration: int, title: str) -> Any:
    try:
        import matplotlib
    except ImportError:
        raise DumpError("pp-timeline draws with matplotlib, which is not installed: pip install matplotlib "
                        "(the `timeline` extra of primus-runtime)") from None

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ranks = sorted(dump.ranks)
    chunks = any((p.chunk or 0) > 0 for r in ranks for p in dump.ranks[r][iteration].passes)
    longest = max(dump.ranks[r][iteration].total for r in ranks) or 1.0
    fig = Figure(figsize=(12, 1.0 + 0.7 * len(ranks)), dpi=100)
    ax = fig.add_subplot()
    for row, rank in enumerate(ranks):
        it = dump.ranks[rank][iteration]
        y = len(ranks) - 1 - row
        ax.broken_barh(idle_spans(it), (y - 0.4, 0.8), facecolors=BUBBLE, hatch="//", edgecolor="#aaaaaa",
                       linewidth=0)
        for p in it.passes:
            ax.broken_barh([(p.start, max(p.end - p.start, longest * 1e-4))], (y - 0.4, 0.8),
                           facecolors=COLOURS[p.kind], edgecolor="white", linewidth=0.5)
            width = p.end - p.start
            text = _label(p, chunks)
            if text and width > longest * 0.012 * len(text):
                ax.text(p.start + width / 2, y, text, ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(len(ranks)), [f"rank {r}" for r in reversed(ranks)])
    ax.set_xlim(0, longest)
    ax.set_ylim(-0.6, len(ranks) - 0.4)
    ax.set_xlabel("ms from the iteration's start (each rank's own clock)")
    ax.set_title(title, fontsize=10)
    kinds = sorted({p.kind for r in ranks for p in dump.ranks[r][iteration].passes}, key="FBW".index)
    handles = [Patch(facecolor=COLOURS[k], label=NAMES[k]) for k in kinds]
    handles.append(Patch(facecolor=BUBBLE, hatch="//", edgecolor="#aaaaaa", label="bubble (idle)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=len(handles), fontsize=8,
              frameon=False)
    fig.tight_layout()
    return fig


def save_png(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")


def save_html(fig: Any, path: Path, title: str, rows: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # the inline element, without the XML prolog and doctype
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>\n"
        "<style>body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse} "
        "th,td{text-align:left;padding:2px 12px 2px 0}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<table>\n{table}\n</table>\n{svg}\n</body></html>\n", encoding="utf-8")

