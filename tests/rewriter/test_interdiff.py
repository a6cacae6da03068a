"""interdiff on the sample upstream: verdicts, moves, upstream changes, the CLI in both modes.

The command-line tests run git (a sample project committed, checked out at a ref) and are slow.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from sample_upstream import (
    BLOCK_PY,
    CONFIG_PY,
    Sample,
    change_factor,
    commit_project,
    git,
    one_error_line,
    write_tree,
)

from rewriter.cli import main
from rewriter.matrix import apply_to_release
from rewriter.patchset.loader import load_patchsets
from rewriter.review.hunks import hunks, scoped_diff
from rewriter.review.interdiff import Side, compare, verdict
from rewriter.review.sides import CHECKOUT_PREFIX
from rewriter.upstream import UpstreamTree

CONFIG = "megatron/core/transformer/config.py"
BLOCK = "megatron/core/transformer/block.py"
PATCH = "double_output"
EARLIER = '''

def helper(x):
    """Upstream added a function above the patched one."""
    return x
'''


def side(sample: Sample, block: str, label: str) -> Side:
    """The sample patchset applied as ``matrix`` applies it to an upstream whose block.py is ``block``."""
    root = write_tree(sample.root.parent / f"upstream-{label}", {CONFIG: CONFIG_PY, BLOCK: block})
    tree = UpstreamTree(root, "sample", "", "0.1.0", None, f"digest-of-{label}", "test", (CONFIG, BLOCK))
    series = load_patchsets(sample.patchsets).series()
    verdicts, result = apply_to_release(series, tree)
    return Side(label, "v0.1.0", tuple(p.id for p in series), result, tree.read,
                {v.patch: (v.verdict, v.reason) for v in verdicts})


def one(sample: Sample, old_block: str, new_block: str):  # noqa: ANN201 - a PatchInterdiff
    (item,) = compare("upstream", side(sample, old_block, "old"), side(sample, new_block, "new")).patches
    return item


def test_same_upstream_is_unchanged(sample: Sample) -> None:
    item = one(sample, BLOCK_PY, BLOCK_PY)
    assert (item.verdict, item.offset, item.interdiff, item.upstream_changes) == ("unchanged", 0, "", [])
    assert item.reasons() == []


def test_lines_added_above_shift_but_do_not_change_the_patch(sample: Sample) -> None:
    shifted = BLOCK_PY.replace('"""Functions that the sample patches edit."""\n', '"""Functions that the sample patches edit."""\n' + EARLIER)
    item = one(sample, BLOCK_PY, shifted)
    assert item.verdict == "unchanged"
    assert item.offset == 1  # the hunk in scale() sits 5 lines lower, with the same content and context
    assert item.interdiff == ""  # hunk headers name scale(), not line numbers
    assert item.upstream_changes == []


def test_new_surroundings_are_a_move_and_an_upstream_change(sample: Sample) -> None:
    rewritten = BLOCK_PY.replace("y = x * config.hidden_size", "y = config.hidden_size * x")
    item = one(sample, BLOCK_PY, rewritten)
    assert item.verdict == "moved"
    ((old, new),) = item.moved
    assert (old.content, old.scope, new.scope) == (new.content, "scale", "scale")
    assert old.context != new.context
    assert [(c.path, c.qualname) for c in item.upstream_changes] == [(BLOCK, "scale")]
    assert "-    y = x * config.hidden_size" in item.upstream_changes[0].diff
    assert f"upstream changed {BLOCK}::scale, which the patch touches" in item.reasons()


def test_different_generated_code_is_a_change(sample: Sample) -> None:
    nested = BLOCK_PY.replace("    y = x * config.hidden_size\n    return y\n",
                              "    with config.lock:\n        y = x * config.hidden_size\n        return y\n")
    item = one(sample, BLOCK_PY, nested)
    assert item.verdict == "changed"
    assert [h.scope for h in item.changed_old] == [h.scope for h in item.changed_new] == ["scale"]
    assert "-+        y = y * 2" in item.interdiff and "++            y = y * 2" in item.interdiff


def test_a_vanished_anchor_is_newly_broken_and_back_is_repaired(sample: Sample) -> None:
    renamed = BLOCK_PY.replace("def scale(", "def scale_all(")
    broken = one(sample, BLOCK_PY, renamed)
    assert (broken.old_state, broken.new_state, broken.verdict) == ("applied", "broken", "newly broken")
    (reason,) = [r for r in broken.reasons() if r.startswith("anchor-missing:")]
    assert reason.startswith(f"anchor-missing: edits[1] (insert_statements) at {BLOCK}::scale: ")
    assert one(sample, renamed, BLOCK_PY).verdict == "repaired"
    assert one(sample, renamed, renamed).verdict == "still broken"


def test_a_semantic_broken_verdict_is_newly_broken(sample: Sample) -> None:
    """``matrix``'s semantic check may call a patch that applied ``broken``: a broken side, with its reason."""
    old = side(sample, BLOCK_PY, "old")
    new = replace(side(sample, BLOCK_PY, "new"), verdicts={PATCH: ("broken", f"{BLOCK}:6: undefined name 'y'")})
    assert (old.state(PATCH), new.state(PATCH)) == ("applied", "broken")
    (item,) = compare("upstream", old, new).patches
    assert (item.verdict, item.reasons()) == ("newly broken", [f"broken: {BLOCK}:6: undefined name 'y'"])


@pytest.mark.parametrize(("old", "new", "moved", "changed", "expected"), [
    ("applied", "retired", False, True, "newly retired"),
    ("retired", "retired", False, False, "unchanged"),
    ("retired", "applied", False, True, "changed"),
    ("absent", "applied", False, True, "added"),
    ("applied", "absent", False, True, "removed"),
    ("broken", "retired", False, True, "repaired"),
    ("runtime", "runtime", False, False, "unchanged"),
    ("applied", "applied", True, False, "moved"),
    ("applied", "applied", True, True, "changed"),
])
def test_verdicts(old: str, new: str, moved: bool, changed: bool, expected: str) -> None:
    assert verdict(old, new, moved, changed) == expected


def test_scoped_diff_names_the_function_not_the_line() -> None:
    before, after = BLOCK_PY, BLOCK_PY.replace("    return y\n", "    y = y + 1\n    return y\n")
    text = scoped_diff({BLOCK: (before, after)})
    assert "@@ scale @@\n" in text and "+    y = y + 1\n" in text
    (hunk,) = hunks({BLOCK: (before, after)})
    assert (hunk.line, hunk.old_line, hunk.scope, hunk.added) == (6, 5, "scale", ("    y = y + 1",))  # inserted after line 5


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_two_upstream_commits(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    """The sample repository's next commit adds a function at the end of block.py: nothing moves."""
    args = sample.args("interdiff", "--upstream-repo", str(sample.upstream.repo), "--from-upstream",
                       sample.upstream.commit[:10], "--to-upstream", sample.upstream.next_commit, "--format", "json",
                       upstream=False)
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"unchanged": 1}
    assert data["old"]["label"].startswith(f"megatron-core 0.1.0 ({sample.upstream.commit[:12]})")
    assert data["new"]["label"].startswith(f"megatron-core 0.1.1 ({sample.upstream.next_commit[:12]})")


@pytest.mark.slow
def test_cli_from_ref(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    commit_project(sample)
    change_factor(sample, 3, commit=True)
    assert main(sample.args("interdiff", "--from-ref", "HEAD~1")) == 0
    out = capsys.readouterr().out
    assert out.startswith("interdiff v0.1.0: HEAD~1 (")
    assert f"changed        v0.1.0  {PATCH}" in out
    assert "-        y = y * 2\n+        y = y * 3\n" in out  # the generated sources, not the YAML
    assert "factor" not in out
    assert git(sample.root, "worktree", "list").count("\n") == 0  # the checkout is gone again
    assert not list(Path(tempfile.gettempdir()).glob(f"{CHECKOUT_PREFIX}*"))


@pytest.mark.slow
def test_cli_from_ref_sees_uncommitted_work(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    commit_project(sample)
    assert main(sample.args("interdiff", "--from-ref", "HEAD", "--format", "md")) == 0
    assert f"| `{PATCH}` | v0.1.0 | `double_output` | unchanged | — |" in capsys.readouterr().out
    change_factor(sample, 5, commit=False)
    assert main(sample.args("interdiff", "--from-ref", "HEAD", "--format", "md")) == 0
    md = capsys.readouterr().out
    assert f"| `{PATCH}` | v0.1.0 | `double_output` | changed | — |" in md
    assert "### `double_output`: changed" in md and "+        y = y * 5" in md


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "code", "needle"), [
    ((), 2, "interdiff needs --from-upstream A --to-upstream B, or --from-ref REF"),
    (("--from-ref", "HEAD", "--from-upstream", "0.1.0"), 2, "do not combine it with --from-upstream"),
    (("--from-upstream", "0.9.9", "--to-upstream", "0.1.0"), 3, "'0.9.9' is neither a release of"),
    (("--from-ref", "no-such-branch"), 3, "--from-ref 'no-such-branch': no such commit"),
])
def test_cli_usage_errors(sample: Sample, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], code: int,
                          needle: str) -> None:
    commit_project(sample)
    assert main(sample.args("interdiff", *extra)) == code
    one_error_line(capsys.readouterr().err, needle)


@pytest.mark.slow
def test_html_page_is_self_contained(sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit_project(sample)
    change_factor(sample, 3, commit=False)
    page = tmp_path / "review" / "interdiff.html"
    assert main(sample.args("interdiff", "--from-ref", "HEAD", "--html", str(page))) == 0
    html = page.read_text(encoding="utf-8")
    assert f'<h3 class="patch-heading">{PATCH} <span class="verdict v-changed">changed</span></h3>' in html
    assert 'class="r anchor"' in html  # def scale(...) is where the insert_statements edit is anchored
    assert "Multiply what scale() returns when the flag is on." in html  # the summary beside the code
    assert '&#34;status&#34;: &#34;applied&#34;' in html  # the manifest entry
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html


def test_side_by_side_folds_equal_lines_but_keeps_anchors() -> None:
    from rewriter.review.html import side_by_side

    left = "".join(f"line{i} = {i}\n" for i in range(20))
    right = left.replace("line10 = 10\n", "line10 = 10\nadded = 1\n")
    rows = side_by_side(left, right, "python", frozenset({2}), frozenset({2}))
    shown = [(r.kind, r.left_no, r.right_no, r.right_anchor) for r in rows]
    assert shown == [("skip", None, None, False), ("equal", 2, 2, True), ("skip", None, None, False),
                     ("equal", 9, 9, False), ("equal", 10, 10, False), ("equal", 11, 11, False),
                     ("insert", None, 12, False),
                     ("equal", 12, 13, False), ("equal", 13, 14, False), ("equal", 14, 15, False),
                     ("skip", None, None, False)]
    assert 'class="n">added</span>' in rows[6].right
