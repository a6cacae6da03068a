"""Compare what the same patches generate on two sides: two upstreams, or two patchset revisions.

A side is a patch series applied (non-strictly: a failing edit is a verdict here, not an error)
to one upstream. Per patch, its generated change on each side is cut into content-keyed hunks
(:mod:`rewriter.review.hunks`) and matched: same content at the same place is unchanged (even a
few lines further down), same content elsewhere is a move, anything else is a change. Whether
the patch applies, is retired by upstream or fails decides first. Beside that, upstream's own
changes inside the functions a patch touches are listed: there a patch may still apply yet mean
something else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rewriter.engine import SeriesResult
from rewriter.matrix import PASSING
from rewriter.patchset.model import Patch
from rewriter.review.hunks import Changes, Hunk, hunks, scoped_diff, text_diff
from rewriter.review.scopes import enclosing, find, source_of, spans

#: every verdict, in the order a summary lists them (worst news first)
VERDICTS = ("newly broken", "still broken", "newly retired", "changed", "moved", "added", "removed",
            "repaired", "unchanged")


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a patch series applied to one upstream."""

    label: str
    version: str  # the patchset version compared: its series is what this side has
    patch_ids: tuple[str, ...]  # that series, in order
    result: SeriesResult  # the series applied (it may hold later versions' patches too)
    read: Callable[[str], str | None]  # the upstream file's text
    #: patch id -> (verdict, reason), as ``rewriter.matrix.apply_to_release`` gives them: applied,
    #: retired, not-targeted, runtime, anchor-missing, ambiguous, or broken (the semantic check)
    verdicts: Mapping[str, tuple[str, str]]

    def patch(self, patch_id: str) -> Patch | None:
        if patch_id not in self.patch_ids:
            return None
        return next((p for p in self.result.series if p.id == patch_id), None)

    def state(self, patch_id: str) -> str:
        """``absent``, ``runtime``, ``broken``, ``retired``, ``not-targeted`` or ``applied``.

        ``broken`` is any failing verdict: an edit that did not apply (anchor-missing, ambiguous)
        or patched code that does not resolve on this release (the semantic check's ``broken``).
        """
        if self.patch(patch_id) is None:
            return "absent"
        status = self.verdicts[patch_id][0]
        return status if status in PASSING else "broken"

    def problems(self, patch_id: str) -> list[str]:
        """Why the patch is broken on this side: its verdict and the reason (failing edits, unresolved names)."""
        if self.state(patch_id) != "broken":
            return []
        verdict, reason = self.verdicts[patch_id]
        return [f"{verdict}: {reason}"]

    def changes(self, patch_id: str) -> Changes:
        return self.result.patch_changes(patch_id) if self.patch(patch_id) is not None else {}


@dataclass(frozen=True)
class FunctionChange:
    """Upstream's own change to a function that a patch touches."""

    path: str
    qualname: str
    diff: str  # unified diff of the function's upstream source, old side to new side


@dataclass
class PatchInterdiff:
    """One patch on both sides, and the verdict."""

    patch_id: str
    old_state: str
    new_state: str
    verdict: str
    old_changes: Changes
    new_changes: Changes
    same: list[tuple[Hunk, Hunk]] = field(default_factory=list)
    moved: list[tuple[Hunk, Hunk]] = field(default_factory=list)
    changed_old: list[Hunk] = field(default_factory=list)
    changed_new: list[Hunk] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why the new side is broken
    interdiff: str = ""  # the diff of the two per-patch diffs (hunk headers name scopes)
    upstream_changes: list[FunctionChange] = field(default_factory=list)

    @property
    def offset(self) -> int:
        """How many unchanged hunks sit at another line number (upstream moved lines above them)."""
        return sum(1 for o, n in self.same if o.line != n.line)

    def reasons(self) -> list[str]:
        """One line per thing a reviewer should know, in the order the verdict weighs them."""
        out = list(self.problems)
        if self.verdict == "newly retired":
            out.append("upstream now has every edit of this patch")
        out += [f"moved: {o.where} -> {n.where}" for o, n in self.moved]
        out += [f"changed: {h.where} (old side)" for h in self.changed_old]
        out += [f"changed: {h.where} (new side)" for h in self.changed_new]
        if self.offset:
            out.append(f"{self.offset} hunk(s) unchanged at another line")
        out += [f"upstream changed {c.path}::{c.qualname}, which the patch touches" for c in self.upstream_changes]
        return out


@dataclass
class Interdiff:
    """Every patch of both sides, in series order (the new side's, then patches only the old has)."""

    kind: str  # "upstream" (two upstreams, one patchset) or "ref" (two patchset revisions)
    old: Side
    new: Side
    patches: list[PatchInterdiff]
    generated: str = ""  # the diff of the generated sources, old side to new (ref mode)

    def patch(self, item: PatchInterdiff) -> Patch:
        """The patch as the new side declares it (the old side's, for a removed patch)."""
        found = self.new.patch(item.patch_id) or self.old.patch(item.patch_id)
        assert found is not None, item.patch_id  # compare() only lists patches of either side
        return found

    def upstream_functions(self) -> list[tuple[FunctionChange, list[str]]]:
        """Each upstream function change once, with the patches that touch the function."""
        seen: dict[tuple[str, str], tuple[FunctionChange, list[str]]] = {}
        for item in self.patches:
            for change in item.upstream_changes:
                seen.setdefault((change.path, change.qualname), (change, []))[1].append(item.patch_id)
        return [seen[key] for key in sorted(seen)]

    def counts(self) -> dict[str, int]:
        return {v: n for v in VERDICTS if (n := sum(1 for p in self.patches if p.verdict == v))}


def match(old: list[Hunk], new: list[Hunk]) -> tuple[list[tuple[Hunk, Hunk]], list[tuple[Hunk, Hunk]], list[Hunk], list[Hunk]]:
    """Pair hunks: same content and place, then same content elsewhere; return (same, moved, old rest, new rest)."""
    left = list(old)
    same: list[tuple[Hunk, Hunk]] = []
    moved: list[tuple[Hunk, Hunk]] = []
    unplaced: list[Hunk] = []
    for h in new:
        twin = next((o for o in left if o.content == h.content and o.placement == h.placement), None)
        if twin is None:
            unplaced.append(h)
        else:
            left.remove(twin)
            same.append((twin, h))
    rest: list[Hunk] = []
    for h in unplaced:
        twin = next((o for o in left if o.content == h.content), None)
        if twin is None:
            rest.append(h)
        else:
            left.remove(twin)
            moved.append((twin, h))
    return same, moved, left, rest


def verdict(old_state: str, new_state: str, moved: bool, changed: bool) -> str:
    """The one word a summary shows for a patch (see :data:`VERDICTS`)."""
    if old_state == "absent":
        return "added"
    if new_state == "absent":
        return "removed"
    if new_state == "broken":
        return "still broken" if old_state == "broken" else "newly broken"
    if old_state == "broken":
        return "repaired"
    if new_state == "retired" and old_state != "retired":
        return "newly retired"
    if changed:
        return "changed"
    return "moved" if moved else "unchanged"


def touched_functions(side: Side, patch_id: str, patch_hunks: list[Hunk]) -> set[tuple[str, str]]:
    """(file, qualified name) of every upstream function the patch edits on this side."""
    out: set[tuple[str, str]] = set()
    changes = side.changes(patch_id)
    for h in patch_hunks:
        span = enclosing(spans(changes[h.path][0]), h.old_line, kind="function")
        if span is not None:
            out.add((h.path, span.qualname))
    patch = side.patch(patch_id)
    for edit in patch.edits if patch is not None else ():
        if edit.target:
            span = find(spans(side.read(edit.file)), edit.target)
            if span is not None and span.kind == "function":
                out.add((edit.file, edit.target))
    return out


def upstream_changes(old: Side, new: Side, functions: set[tuple[str, str]]) -> list[FunctionChange]:
    """The functions whose upstream source differs between the two sides."""
    out = []
    for path, qualname in sorted(functions):
        before = source_of(old.read(path), qualname) or ""
        after = source_of(new.read(path), qualname) or ""
        if before != after:
            diff = text_diff(before, after, f"{old.label}: {path}::{qualname}", f"{new.label}: {path}::{qualname}")
            out.append(FunctionChange(path, qualname, diff))
    return out


def compare_patch(patch_id: str, old: Side, new: Side) -> PatchInterdiff:
    old_changes, new_changes = old.changes(patch_id), new.changes(patch_id)
    old_hunks, new_hunks = hunks(old_changes), hunks(new_changes)
    same, moved, changed_old, changed_new = match(old_hunks, new_hunks)
    old_state, new_state = old.state(patch_id), new.state(patch_id)
    item = PatchInterdiff(
        patch_id=patch_id, old_state=old_state, new_state=new_state,
        verdict=verdict(old_state, new_state, bool(moved), bool(changed_old or changed_new)),
        old_changes=old_changes, new_changes=new_changes,
        same=same, moved=moved, changed_old=changed_old, changed_new=changed_new,
        problems=new.problems(patch_id),
    )
    old_text, new_text = scoped_diff(old_changes), scoped_diff(new_changes)
    item.interdiff = text_diff(old_text, new_text, f"{patch_id} on {old.label}", f"{patch_id} on {new.label}")
    functions = touched_functions(old, patch_id, old_hunks) | touched_functions(new, patch_id, new_hunks)
    item.upstream_changes = upstream_changes(old, new, functions)
    return item


def compare(kind: str, old: Side, new: Side, generated: str = "") -> Interdiff:
    """Every patch of the new side's series, then those only the old side has."""
    ids = list(new.patch_ids) + [pid for pid in old.patch_ids if pid not in new.patch_ids]
    return Interdiff(kind, old, new, [compare_patch(pid, old, new) for pid in ids], generated)
