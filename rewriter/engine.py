"""Apply a series of patches to an upstream tree: one parse per touched file, edits in order.

The engine knows operations, never flags. For every file that some edit touches it parses the
upstream text once, applies every edit for that file in series order, records the text after
each patch (for per-patch diffs and per-version trees), then parses the result again and applies
every edit a second time: that pass must find everything already present and change nothing.

Results are cached by content (tool versions, upstream file bytes, rendered edits), so an
unchanged rebuild neither imports nor runs libcst.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rewriter.cache import JsonCache, cache_key
from rewriter.errors import ApplyError, DriftError
from rewriter.ops.import_module import ReleaseTree, resolve_imports
from rewriter.patchset.model import Edit, Patch

#: ``not-applicable``: the edit is limited to other upstream releases (its ``releases`` range)
OK_STATUSES = ("applied", "already-present", "not-applicable")
#: operations that create a file rather than edit a parsed one
NEW_FILE_OPS = ("add_module", "import_module")


@dataclass(frozen=True)
class EditReport:
    """What one edit did: the row a reviewer reads in the build report."""

    patch: str
    index: int
    op: str
    file: str
    target: str | None
    status: str
    count: int
    expect: int
    message: str = ""
    candidates: tuple[str, ...] = ()
    source: str = ""
    #: which form of the edit ran: ``default`` or ``variants[<n>]`` (see ``Edit.for_release``)
    variant: str = "default"

    def describe(self, with_status: bool = True) -> str:
        """``edits[i] (op) at file::target[: status][: message][ (nearest: ...)]``: the one wording
        of an edit's outcome in drift errors and in the release matrix."""
        where = f"{self.file}::{self.target}" if self.target else self.file
        text = f"edits[{self.index}] ({self.op}) at {where}"
        for part in ((self.status,) if with_status else ()) + ((self.message,) if self.message else ()):
            text += f": {part}"
        if self.candidates:
            text += f" (nearest: {', '.join(self.candidates)})"
        return text


@dataclass
class FileOutcome:
    """The history of one file through the series."""

    path: str
    upstream: str | None
    #: (patch id, text after that patch), for the patches that touch this file, in order
    steps: list[tuple[str, str]] = field(default_factory=list)
    reports: list[EditReport] = field(default_factory=list)


@dataclass
class SeriesResult:
    """Every touched file's history and the status of every patch."""

    series: list[Patch]
    files: dict[str, FileOutcome]

    @property
    def reports(self) -> list[EditReport]:
        return [r for f in self.files.values() for r in f.reports]

    def patch_status(self, patch: Patch) -> str:
        """``applied``, ``retired`` (upstream already has every edit that targets this release), or
        ``runtime``; a failing edit's status (``anchor-missing``, ``ambiguous``) when the series
        was applied with ``strict=False``."""
        if patch.implemented_in == "runtime":
            return "runtime"
        statuses = {r.status for r in self.reports if r.patch == patch.id}
        failed = sorted(statuses - set(OK_STATUSES))
        if failed:
            return failed[0]
        return "retired" if statuses <= {"already-present", "not-applicable"} else "applied"

    def failures(self) -> list[EditReport]:
        """The edits that did not apply (empty unless applied with ``strict=False``)."""
        return [r for r in self.reports if r.status not in OK_STATUSES]

    def text_after(self, path: str, patch_ids: set[str]) -> str | None:
        """The file's text once every patch in ``patch_ids`` (a series prefix) is applied."""
        outcome = self.files[path]
        text = outcome.upstream
        for pid, after in outcome.steps:
            if pid in patch_ids:
                text = after
        return text

    def tree(self, patch_ids: set[str]) -> dict[str, str]:
        """Changed files (path -> text) of the tree with the given series prefix applied."""
        out = {}
        for path, outcome in self.files.items():
            text = self.text_after(path, patch_ids)
            if text is not None and text != outcome.upstream:
                out[path] = text
        return out

    def patch_changes(self, patch_id: str) -> dict[str, tuple[str | None, str]]:
        """path -> (before, after) for what this one patch changed."""
        out: dict[str, tuple[str | None, str]] = {}
        for path, outcome in self.files.items():
            before = outcome.upstream
            for pid, after in outcome.steps:
                if pid == patch_id and after != before:
                    out[path] = (before, after)
                before = after
        return out


def apply_series(
    series: list[Patch],
    read_upstream: Callable[[str], str | None],
    upstream_label: str,
    cache: JsonCache | None = None,
    verify: bool = True,
    releases: Callable[[str], ReleaseTree] | None = None,
    version: str | None = None,
    strict: bool = True,
) -> SeriesResult:
    """Apply ``series`` in order; raise :class:`DriftError` listing every edit that failed.

    ``version`` is the upstream release (``megatron.core`` version): each edit runs in its form
    for that release (``Edit.for_release``), and edits limited to other releases are reported
    ``not-applicable``. ``releases`` resolves another upstream release by version, for
    ``import_module`` edits: their sources are read from it first (see
    :func:`rewriter.ops.import_module.resolve_imports`), and the result's ``series`` carries
    those resolved edits (with source and release digests). With ``strict=False`` failing edits
    are only reported (``SeriesResult.failures``): what ``matrix`` needs, one verdict per patch.
    """
    series = [replace(p, edits=tuple(e.for_release(version) for e in p.edits)) for p in series]
    series = resolve_imports(series, releases, read_upstream, upstream_label, strict)
    retired = upstream_features(series, read_upstream)
    by_file: dict[str, list[tuple[Patch, int, Edit]]] = {}
    for patch in series:
        for i, edit in enumerate(patch.edits):
            by_file.setdefault(edit.file, []).append((patch, i, edit))
    cache = cache or JsonCache(None)
    files: dict[str, FileOutcome] = {}
    for path, edits in by_file.items():
        upstream = read_upstream(path)
        mine = {p.id: why for p, _, _ in edits if (why := retired.get(p.id))}
        key = _cache_key(path, upstream, edits, verify, mine)
        hit = _cached_outcome(cache, key, path, upstream)
        if hit is not None:
            files[path] = hit
            continue
        outcome = _apply_file(path, upstream, edits, retired=mine)
        files[path] = outcome
        if all(r.status in OK_STATUSES for r in outcome.reports):
            if verify:
                _verify_stable(outcome, edits, mine)
            cache.put(key, _outcome_to_json(outcome))
    result = SeriesResult(series=series, files=files)
    failures = result.failures()
    if failures and strict:
        raise DriftError(_drift_message(failures, upstream_label))
    return result


def upstream_features(series: list[Patch], read_upstream: Callable[[str], str | None]) -> dict[str, str]:
    """Patch id -> why, for each patch whose ``upstream.retired_when`` statement upstream has.

    The statement is compared as Python (``ast``) with every simple statement of the file, at any
    depth, so layout and comments do not matter.
    """
    import ast

    found: dict[str, str] = {}
    for patch in series:
        if patch.retired_when is None:
            continue
        path, statement = patch.retired_when
        text = read_upstream(path)
        if text is None:
            continue
        wanted = ast.dump(ast.parse(statement).body[0])
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue  # the file's own edits report that it does not parse
        if any(isinstance(node, ast.stmt) and ast.dump(node) == wanted for node in ast.walk(tree)):
            found[patch.id] = f"upstream has the feature: {path} has `{statement}`"
    return found


def _cache_key(path: str, upstream: str | None, edits: list[tuple[Patch, int, Edit]], verify: bool,
               retired: dict[str, str]) -> str:
    parts = [path, str(verify), "absent" if upstream is None else "file:" + upstream, repr(sorted(retired))]
    for patch, i, edit in edits:
        flags = repr([(f.name, f.type, f.default, f.choices, f.nullable, f.description) for f in patch.gating_flags])
        parts.append(f"{patch.id}\x1f{i}\x1f{flags}\x1f{edit.cache_token()}")
    return cache_key("engine", *parts)


def _cached_outcome(cache: JsonCache, key: str, path: str, upstream: str | None) -> FileOutcome | None:
    """A cached outcome, or ``None``; an entry of the wrong shape is discarded like a damaged one."""
    hit = cache.get(key)
    if hit is None or cache.root is None:
        return None
    try:
        return _outcome_from_json(path, upstream, hit)
    except (TypeError, KeyError, ValueError):
        cache.damaged(cache.path_of(key), "is not an engine result")
        return None


def _apply_file(path: str, upstream: str | None, edits: list[tuple[Patch, int, Edit]],
                created_by_series: bool = False, retired: dict[str, str] | None = None) -> FileOutcome:
    """Apply ``edits`` to one file in order.

    ``created_by_series`` is set by the second pass for a file that an ``add_module`` or
    ``import_module`` edit of the series created: it exists now, possibly with later edits'
    insertions, and that is expected. The edits of ``retired`` patches (id -> why: upstream has
    their feature) are not applied; each reports ``already-present``.
    """
    import libcst as cst

    from rewriter.ops.add_module import add_module
    from rewriter.ops.base import Status
    from rewriter.ops.import_module import import_module
    from rewriter.ops.registry import FILE_OPS

    outcome = FileOutcome(path=path, upstream=upstream)
    text, module = upstream, None
    retired = retired or {}
    for n, (patch, i, edit) in enumerate(edits):
        if patch.id in retired:
            report = _report(patch, i, edit, Status.PRESENT.value, 0, retired[patch.id])
        elif not edit.applies:
            report = _report(patch, i, edit, "not-applicable", 0, f"limited to releases {edit.releases}")
        elif edit.failure:
            report = _report(patch, i, edit, Status.MISSING.value, 0, edit.failure)
        elif edit.op in NEW_FILE_OPS and created_by_series:
            report = _report(patch, i, edit, Status.PRESENT.value, 1)
        elif edit.op in NEW_FILE_OPS:
            new_text: str | None
            if edit.op == "add_module":
                status, new_text, message = add_module(edit, text)
            else:
                status, new_text, message = import_module(edit, patch.id, text)
            text, module = new_text, None
            report = _report(patch, i, edit, status.value, 1, message)
        elif text is None:
            report = _report(patch, i, edit, Status.MISSING.value, 0, f"file {path} does not exist")
        else:
            if module is None:
                try:
                    module = cst.parse_module(text)
                except cst.ParserSyntaxError as exc:
                    raise ApplyError(f"{path}: libcst cannot parse it: {exc}") from exc
            result = FILE_OPS[edit.op](edit, patch.id, patch.gating_flags).apply(module)
            module = result.module
            text = module.code
            report = _report(patch, i, edit, result.status.value, result.count, result.message, result.candidates)
        outcome.reports.append(report)
        last_of_patch = n + 1 == len(edits) or edits[n + 1][0].id != patch.id
        if last_of_patch and text is not None:
            outcome.steps.append((patch.id, text))
    return outcome


def _report(patch: Patch, i: int, edit: Edit, status: str, count: int, message: str = "",
            candidates: tuple[str, ...] = ()) -> EditReport:
    return EditReport(patch=patch.id, index=i, op=edit.op, file=edit.file, target=edit.target, status=status,
                      count=count, expect=edit.expect, message=message, candidates=tuple(candidates), source=edit.source,
                      variant=edit.variant)


def _verify_stable(outcome: FileOutcome, edits: list[tuple[Patch, int, Edit]], retired: dict[str, str]) -> None:
    """Apply every edit again to the final text: each must be present, and nothing may change."""
    if not outcome.steps:
        return
    final = outcome.steps[-1][1]
    second = _apply_file(outcome.path, final, edits, created_by_series=outcome.upstream is None, retired=retired)
    unstable = [r for r in second.reports if r.status not in ("already-present", "not-applicable")]
    changed = second.steps and second.steps[-1][1] != final
    if unstable or changed:
        what = ", ".join(f"{r.patch} edits[{r.index}] ({r.op}) -> {r.status}" for r in unstable) or "text changed"
        raise ApplyError(
            f"{outcome.path}: applying the series a second time is not a no-op ({what}); "
            "an operation does not recognise its own output"
        )


def _drift_message(failures: list[EditReport], upstream_label: str) -> str:
    """One line: every failing edit with patch, file, target, status, nearest candidates, source."""
    lines = [f"patch {r.patch} {r.describe()} [{r.source}]" for r in failures]
    return (
        f"{len(failures)} edit(s) do not apply to upstream {upstream_label}: " + "; ".join(lines)
        + ". Fix the anchor in the patch (`python -m rewriter check` re-runs this) or retire the patch."
    )


def _outcome_to_json(outcome: FileOutcome) -> dict[str, Any]:
    return {"steps": outcome.steps, "reports": [asdict(r) for r in outcome.reports]}


def _outcome_from_json(path: str, upstream: str | None, data: dict[str, Any]) -> FileOutcome:
    reports = [EditReport(**{**r, "candidates": tuple(r["candidates"])}) for r in data["reports"]]
    return FileOutcome(path=path, upstream=upstream, steps=[tuple(s) for s in data["steps"]], reports=reports)
