"""interdiff on the real thing, with every patchset up to v0.4.0: the real bump 0.16.0 -> 0.16.1,
megatron-core 0.10.0 (the drift testbed) against the pin both ways, and two revisions of this
repository in a temporary clone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rewriter.build import Paths, Upstream
from rewriter.cli import main
from rewriter.review.html import render_html
from rewriter.review.interdiff import Interdiff, compare
from rewriter.review.report import render_markdown
from rewriter.review.sides import Verdicts, apply_side, release_label, side
from rewriter.ui import UI
from rewriter.upstream import default_cache_dir
from tests.conftest import BUILD_CACHE, ROOT

pytestmark = pytest.mark.slow

#: the patches whose anchors 0.10.0 lacks, and those that apply there but do not resolve (the
#: semantic check's ``broken``), as ``check --upstream-release 0.10.0`` names them
ANCHORS_MISSING_ON_0_10 = {"moe_permute_fusion_portable", "use_deprecated_20241209_moe_layer",
                           "fused_padded_mla_attention", "use_turbo_deepep"}
UNRESOLVED_ON_0_10 = {"moe_router_force_load_balancing", "moe_use_fused_router_with_aux_score",
                      "use_turbo_grouped_mlp"}
AMBIGUOUS_ON_0_10 = {"dump_pp_data"}  # forward_step has one more return there
FAILING_ON_0_10 = ANCHORS_MISSING_ON_0_10 | UNRESOLVED_ON_0_10 | AMBIGUOUS_ON_0_10
#: every patch of v0.1.0 ... v0.4.0
PATCHES = len(list((ROOT / "patchsets").glob("v*/*/patch.yaml")))
RUNTIME = {"trainer_trackers", "trainer_resume_and_saving", "trainer_compile_dependencies", "trainer_pp_warmup",
           "trainer_profiler_cpu_activity", "trainer_memory_info", "trainer_mlflow"}


PATHS = Paths(ROOT / "patchsets", ROOT / "vendor" / "upstream.yaml", default_cache_dir(ROOT), BUILD_CACHE)


@pytest.fixture(scope="module")
def old_release() -> Verdicts:
    return apply_side(PATHS, Upstream(release="0.10.0"), UI(quiet=True))


@pytest.fixture(scope="module")
def pinned() -> Verdicts:
    return apply_side(PATHS, Upstream(), UI(quiet=True))


def _compare(old: Verdicts, new: Verdicts) -> Interdiff:
    return compare("upstream", side(old, "v0.4.0", release_label(old.applied)),
                   side(new, "v0.4.0", release_label(new.applied)))


def test_the_real_bump_0_16_0_to_0_16_1(capsys: pytest.CaptureFixture[str]) -> None:
    """0.16.1 changed four files of megatron/core, none that a patch touches: nothing moves."""
    assert main(["interdiff", "-q", "--root", str(ROOT), "--from-upstream", "0.16.0", "--to-upstream", "0.16.1",
                 "--format", "json", "--upstream-cache", str(default_cache_dir(ROOT)),
                 "--build-cache", str(BUILD_CACHE)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["old"]["label"] == "megatron-core 0.16.0 (3bec9aa97dda)"
    assert data["new"]["label"] == "megatron-core 0.16.1 (55ac7082517c)"
    assert data["counts"] == {"unchanged": PATCHES}
    for patch in data["patches"]:
        assert (patch["reasons"], patch["interdiff"], patch["upstream_changes"]) == ([], "", []), patch["id"]
    assert {p["id"]: p["new_state"] for p in data["patches"]}["moe_permute_fusion"] == "retired"


def test_0_10_0_to_the_pin(old_release: Verdicts, pinned: Verdicts) -> None:
    diff = _compare(old_release, pinned)
    verdicts = {p.patch_id: p.verdict for p in diff.patches}
    assert len(verdicts) == PATCHES
    assert {p for p, v in verdicts.items() if v == "repaired"} == FAILING_ON_0_10
    assert verdicts["moe_permute_fusion"] == "newly retired"  # upstream has moe_permute_fusion since 0.11
    # upstream's pipeline_model_parallel_layout (0.13.1 on) spells the manual split
    assert verdicts["decoder_pipeline_manual_split_list"] == "newly retired"
    assert {verdicts[p] for p in RUNTIME} == {"unchanged"}
    # the fused router's template calls upstream's routing with padding_mask where the release has it
    router = next(p for p in diff.patches if p.patch_id == "moe_use_fused_router_with_aux_score")
    assert router.changed_old and router.changed_new
    assert "-+            return _primus_impl(self, logits)\n" in router.interdiff
    assert "++            return _primus_impl(self, logits, padding_mask)\n" in router.interdiff
    # the anchors moved by hundreds of lines, yet the same code is inserted in the same functions
    turbo = next(p for p in diff.patches if p.patch_id == "use_turbo_attention")
    assert turbo.verdict == "moved" and not turbo.changed_new
    assert {(o.scope, n.scope) for o, n in turbo.moved} >= {("Attention.__init__", "Attention.__init__")}
    touched = {(c.path, c.qualname) for c, _ in diff.upstream_functions()}
    assert ("megatron/core/transformer/moe/router.py", "TopKRouter.routing") in touched
    md = render_markdown(diff)
    assert md.startswith("## Interdiff v0.4.0: megatron-core 0.10.0 -> megatron-core 0.16.1 (55ac7082517c)\n")
    assert "| `moe_permute_fusion` | v0.1.0 | `moe_permute_fusion` | newly retired |" in md
    assert len(md.encode()) < 1 << 20  # fits a GitHub job summary
    html = render_html(diff)
    for patch_id in verdicts:
        assert f'<h3 class="patch-heading">{patch_id} ' in html


def test_the_pin_to_0_10_0_is_newly_broken(old_release: Verdicts, pinned: Verdicts) -> None:
    diff = _compare(pinned, old_release)
    broken = {p.patch_id: p for p in diff.patches if p.verdict == "newly broken"}
    assert set(broken) == FAILING_ON_0_10
    mla = broken["fused_padded_mla_attention"]
    assert mla.reasons()[0].startswith("anchor-missing: edits[3] (insert_statements) at "
                                       "megatron/core/transformer/multi_latent_attention.py::MultiLatentAttention.forward: "
                                       "anchor 'value = value.contiguous()' not found")
    # applies, but the code it makes reads a name 0.10.0's routing does not define
    router = broken["moe_router_force_load_balancing"]
    assert not router.changed_new and router.reasons()[0].startswith("broken: megatron/core/transformer/moe/router.py:")
    assert "undefined name 'probs'" in router.reasons()[0]
    assert diff.counts()["newly broken"] == len(FAILING_ON_0_10)


def test_from_ref_in_a_clone_of_this_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A commit that changes one patch's code template: that patch changes, one whose code follows it moves."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    patch = clone / "patchsets" / "v0.2.0" / "use_turbo_attention" / "patch.yaml"
    text = patch.read_text(encoding="utf-8")
    assert text.count("      check_config(self)\n") == 1
    patch.write_text(text.replace("      check_config(self)\n", "      check_config(self)  # refused early\n"))
    who = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", *who, "commit", "-qam", "turbo: say why"], cwd=clone, check=True)

    assert main(["interdiff", "-q", "--root", str(clone), "--from-ref", "HEAD~1", "--format", "json",
                 "--upstream-cache", str(default_cache_dir(ROOT)), "--build-cache", str(BUILD_CACHE)]) == 0
    data = json.loads(capsys.readouterr().out)
    # use_turbo_grouped_mlp inserts its code right after that line: same code, other context
    assert data["counts"] == {"changed": 1, "moved": 1, "unchanged": PATCHES - 2}
    assert {p["id"] for p in data["patches"] if p["verdict"] == "moved"} == {"use_turbo_grouped_mlp"}
    (changed,) = [p for p in data["patches"] if p["verdict"] == "changed"]
    assert changed["id"] == "use_turbo_attention"
    assert "++            check_config(self)  # refused early\n" in changed["interdiff"]
    files = [line.split(" b/")[-1] for line in data["generated"].splitlines() if line.startswith("diff --git")]
    assert files == ["megatron/core/_primus/manifest.json", "megatron/core/transformer/transformer_config.py"]
    listed = subprocess.run(["git", "worktree", "list"], cwd=clone, check=True, capture_output=True, text=True)
    assert len(listed.stdout.splitlines()) == 1
