"""Bubble fractions of a pipeline schedule: measured, and implied by the order of passes alone.

*Measured*: on each rank, the share of its iteration time (``total``) not covered by any pass,
summed over ranks (``Σ idle / Σ total``). It includes everything outside the passes: point-to-point
waits, gradient reductions at the end, and the clock's own overhead.

*Unit-cost*: the same schedule replayed with every pass taking one unit, each rank running its
passes in the dumped order and each pass waiting for the pass it depends on: the forward of a
microbatch on the previous virtual stage, the backward on the next one (and its own forward), a
weight-gradient pass on its own backward. A property of the order, not of the machine: 1F1B on
``p`` stages with ``m`` microbatches gives ``(p - 1) / (m + p - 1)``. Virtual stage ``v`` of a
model chunk ``c`` on rank ``r`` is ``c * p + r``.
"""

from __future__ import annotations

from dataclasses import dataclass

from primus_runtime.timeline.dump import Dump, DumpError, Pass, RankIteration


def idle_spans(iteration: RankIteration) -> list[tuple[float, float]]:
    """(start, length) of each stretch inside ``[0, total]`` that no pass covers."""
    spans, reach = [], 0.0
    for p in sorted(iteration.passes, key=lambda p: p.start):
        if p.start > reach:
            spans.append((reach, p.start - reach))
        reach = max(reach, p.end)
    if iteration.total > reach:
        spans.append((reach, iteration.total - reach))
    return spans


@dataclass(frozen=True)
class Measured:
    fraction: float  # over every rank of the iteration(s)
    per_rank: dict[int, float]


def measured(dump: Dump, iterations: list[int]) -> Measured:
    per_rank = {}
    idle_all = total_all = 0.0
    for rank, its in dump.ranks.items():
        total = sum(its[i].total for i in iterations)
        idle = sum(length for i in iterations for _, length in idle_spans(its[i]))
        per_rank[rank] = idle / total if total else 0.0
        idle_all, total_all = idle_all + idle, total_all + total
    return Measured(idle_all / total_all if total_all else 0.0, per_rank)


def unit_cost(dump: Dump, iteration: int) -> float:
    """The bubble fraction of ``iteration``'s dumped order with every pass one unit long."""
    if not dump.has_ids():
        raise DumpError(f"{dump.folder}: the dump has no microbatch ids (a Primus dump of megatron's own "
                        f"schedules), so the order cannot be replayed")
    orders = {rank: its[iteration].passes for rank, its in dump.ranks.items()}
    return replay(orders)


def replay(orders: dict[int, tuple[Pass, ...]]) -> float:
    """Bubble fraction of per-rank pass orders run with unit costs (see the module's docstring)."""
    pp = len(orders)
    stages = pp * (1 + max((p.chunk or 0) for passes in orders.values() for p in passes))
    done: dict[tuple[str, int, int], int] = {}  # (kind, microbatch, virtual stage) -> finish time
    clock = dict.fromkeys(orders, 0)
    at = dict.fromkeys(orders, 0)
    remaining = sum(len(p) for p in orders.values())
    while remaining:
        progressed = False
        for rank, passes in orders.items():
            while at[rank] < len(passes):
                p = passes[at[rank]]
                stage = (p.chunk or 0) * pp + rank
                deps = _dependencies(p, stage, stages)
                if any(d not in done for d in deps):
                    break
                begin = max([clock[rank], *(done[d] for d in deps)])
                done[(p.kind, p.microbatch or 0, stage)] = clock[rank] = begin + 1
                at[rank] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            waiting = {r: passes[at[r]] for r, passes in orders.items() if at[r] < len(passes)}
            raise DumpError(f"the dumped order cannot run: every rank waits ({_describe(waiting)})")
    makespan = max(clock.values())
    work = sum(len(p) for p in orders.values())
    return 1 - work / (pp * makespan) if makespan else 0.0


def _dependencies(p: Pass, stage: int, stages: int) -> list[tuple[str, int, int]]:
    mb = p.microbatch or 0
    if p.kind == "F":
        return [("F", mb, stage - 1)] if stage > 0 else []
    if p.kind == "B":
        deps = [("F", mb, stage)]
        return deps + [("B", mb, stage + 1)] if stage < stages - 1 else deps
    return [("B", mb, stage)]


def _describe(waiting: dict[int, Pass]) -> str:
    return "; ".join(f"rank {r}: {p.kind} of microbatch {p.microbatch} chunk {p.chunk}" for r, p in waiting.items())
