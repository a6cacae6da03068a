"""Load a ``dump_pp_data`` folder: ``pp_rank_<r>.json`` per pipeline rank, optionally ``config.json``.

The layout is Primus's (written by ``megatron.core._primus.pp_dump``, or by Primus itself): each
rank file maps the iteration number to ``total`` (ms), ``memory`` (GiB) and, for each kind of pass
(``fwd``, ``bwd``, ``wgrad``), the lists ``<kind>_start``, ``<kind>_end`` (ms from the iteration's
start on that rank) and ``<kind>_minibatch``, ``<kind>_chunk`` (empty in Primus's own dumps of
megatron's schedules). Anything else is refused with a message naming the file and what is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from primus_runtime.errors import PrimusRuntimeError

KINDS = {"fwd": "F", "bwd": "B", "wgrad": "W"}
_RANK_FILE = re.compile(r"pp_rank_(\d+)\.json")


class DumpError(PrimusRuntimeError):
    """A dump folder is missing, incomplete or not in the ``dump_pp_data`` layout."""

    exit_code = 4


@dataclass(frozen=True)
class Pass:
    kind: str  # "F", "B" or "W"
    start: float  # ms from the iteration's start on its rank
    end: float
    microbatch: int | None  # None: the dump does not say
    chunk: int | None


@dataclass(frozen=True)
class RankIteration:
    total: float  # ms
    memory: float  # GiB
    passes: tuple[Pass, ...]  # in the order they started


@dataclass(frozen=True)
class Dump:
    folder: Path
    #: rank -> iteration number -> what it ran
    ranks: dict[int, dict[int, RankIteration]]
    config: dict[str, Any]

    @property
    def iterations(self) -> list[int]:
        return sorted(self.ranks[0])

    def has_ids(self) -> bool:
        return all(p.microbatch is not None for it in self.ranks.values() for r in it.values() for p in r.passes)


def load(folder: Path) -> Dump:
    """Read and check every rank file of ``folder``."""
    if not folder.exists():
        raise DumpError(f"{folder}: no such directory (a dump_pp_data folder: DUMP_PP_DIR, or <exp_root>/pp_data)")
    if not folder.is_dir():
        raise DumpError(f"{folder}: not a directory (give the dump_pp_data folder, not a file in it)")
    files = {int(m.group(1)): p for p in folder.iterdir() if (m := _RANK_FILE.fullmatch(p.name))}
    if not files:
        raise DumpError(f"{folder}: no pp_rank_<r>.json files; is this a dump_pp_data folder? (train with "
                        f"dump_pp_data: true; it is written when training ends)")
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if not isinstance(config, dict):
        raise DumpError(f"{folder / 'config.json'}: expected an object of run settings")
    expected = config.get("pp_size", max(files) + 1)
    missing = sorted(set(range(int(expected))) - set(files))
    if missing:
        raise DumpError(f"{folder}: pp_rank_{missing[0]}.json is missing (the dump has ranks {sorted(files)}, "
                        f"pipeline size {expected})")
    ranks = {rank: _rank(path) for rank, path in sorted(files.items())}
    iterations = {rank: sorted(its) for rank, its in ranks.items()}
    if len({tuple(v) for v in iterations.values()}) > 1:
        raise DumpError(f"{folder}: the ranks recorded different iterations ({iterations}); the files are from "
                        f"different runs")
    return Dump(folder, ranks, config)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DumpError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); the file is damaged or "
                        f"was cut short") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DumpError(f"{path}: cannot read it: {exc}") from None


def _rank(path: Path) -> dict[int, RankIteration]:
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise DumpError(f"{path}: expected an object mapping iteration numbers to their passes, got "
                        f"{type(data).__name__ if data else 'nothing'}")
    out = {}
    for key, entry in data.items():
        if not str(key).isdigit():
            raise DumpError(f"{path}: key {key!r} is not an iteration number")
        out[int(key)] = _iteration(path, int(key), entry)
    return out


def _iteration(path: Path, number: int, entry: Any) -> RankIteration:
    where = f"{path}: iteration {number}"
    if not isinstance(entry, dict):
        raise DumpError(f"{where}: expected an object, got {type(entry).__name__}")
    total, memory = entry.get("total"), entry.get("memory", 0.0)
    if not _number(total) or total < 0:
        raise DumpError(f"{where}: 'total' must be the iteration's time in ms, got {total!r}")
    passes = []
    for name, kind in KINDS.items():
        starts, ends = entry.get(f"{name}_start", []), entry.get(f"{name}_end", [])
        mbs, chunks = entry.get(f"{name}_minibatch", []), entry.get(f"{name}_chunk", [])
        for label, values in ((f"{name}_start", starts), (f"{name}_end", ends), (f"{name}_minibatch", mbs),
                              (f"{name}_chunk", chunks)):
            if not isinstance(values, list) or not all(_number(v) for v in values):
                raise DumpError(f"{where}: {label} must be a list of numbers")
        if len(starts) != len(ends) or (mbs and len(mbs) != len(starts)) or (chunks and len(chunks) != len(starts)):
            raise DumpError(f"{where}: {name}_start, {name}_end, {name}_minibatch and {name}_chunk have "
                            f"{len(starts)}, {len(ends)}, {len(mbs)} and {len(chunks)} entries")
        for i, (s, e) in enumerate(zip(starts, ends)):
            if not 0 <= s <= e:
                raise DumpError(f"{where}: {name} pass {i} starts at {s} ms and ends at {e} ms")
            passes.append(Pass(kind, float(s), float(e), int(mbs[i]) if mbs else None,
                               int(chunks[i]) if chunks else None))
    passes.sort(key=lambda p: (p.start, p.end))
    return RankIteration(float(total), float(memory) if _number(memory) else 0.0, tuple(passes))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
