"""interdiff on the real thing: megatron-core 0.10.0 (the drift testbed) against the pin, both ways,
with every patchset up to v0.4.0; and two revisions of this repository in a temporary clone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rewriter.build import Applied, Paths, Upstream, apply_patchsets
from rewriter.cli import main
from rewriter.review.html import render_html
from rewriter.review.interdiff import Interdiff, compare
from rewriter.review.report import render_markdown
from rewriter.review.sides import release_label, side
from rewriter.ui import UI
from rewriter.upstream import default_cache_dir
from tests.conftest import BUILD_CACHE, ROOT

pytestmark = pytest.mark.slow

#: the patches whose anchors 0.10.0 lacks (``check --upstream-release 0.10.0`` names them)
BROKEN_ON_0_10 = {"moe_permute_fusion_portable", "use_deprecated_20241209_moe_layer", "fused_padded_mla_attention"}
RUNTIME = {"trainer_trackers", "trainer_resume_and_saving", "trainer_compile_dependencies", "trainer_pp_warmup",
           "trainer_profiler_cpu_activity", "trainer_memory_info", "trainer_mlflow"}


@pytest.fixture(scope="module")
def old_release() -> Applied:
    paths = Paths(ROOT / "patchsets", ROOT / "vendor" / "upstream.yaml", default_cache_dir(ROOT), BUILD_CACHE)
    return apply_patchsets(paths, Upstream(release="0.10.0"), UI(quiet=True), strict=False)


def _compare(old: Applied, new: Applied) -> Interdiff:
    return compare("upstream", side(old, "v0.4.0", release_label(old)), side(new, "v0.4.0", release_label(new)))


def test_0_10_0_to_the_pin(old_release: Applied, applied: Applied) -> None:
    diff = _compare(old_release, applied)
    verdicts = {p.patch_id: p.verdict for p in diff.patches}
    assert len(verdicts) == 17
    assert {p for p, v in verdicts.items() if v == "repaired"} == BROKEN_ON_0_10
    assert verdicts["moe_permute_fusion"] == "newly retired"  # upstream has moe_permute_fusion since 0.11
    assert {verdicts[p] for p in RUNTIME} == {"unchanged"}
    # the fused router's template calls upstream's routing with padding_mask where the release has it
    router = next(p for p in diff.patches if p.patch_id == "moe_use_fused_router_with_aux_score")
    assert router.verdict == "changed"
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


def test_the_pin_to_0_10_0_is_newly_broken(old_release: Applied, applied: Applied) -> None:
    diff = _compare(applied, old_release)
    broken = {p.patch_id: p for p in diff.patches if p.verdict == "newly broken"}
    assert set(broken) == BROKEN_ON_0_10
    mla = broken["fused_padded_mla_attention"]
    assert any("MultiLatentAttention.forward: anchor-missing: anchor 'value = value.contiguous()'" in r
               for r in mla.reasons())
    assert diff.counts()["newly broken"] == 3


def test_from_ref_in_a_clone_of_this_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A commit that changes one patch's code template: only that patch and the files it writes change."""
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
    assert data["counts"] == {"changed": 1, "unchanged": 16}
    (changed,) = [p for p in data["patches"] if p["verdict"] == "changed"]
    assert changed["id"] == "use_turbo_attention"
    assert "++            check_config(self)  # refused early\n" in changed["interdiff"]
    files = [line.split(" b/")[-1] for line in data["generated"].splitlines() if line.startswith("diff --git")]
    assert files == ["megatron/core/_primus/manifest.json", "megatron/core/transformer/transformer_config.py"]
    listed = subprocess.run(["git", "worktree", "list"], cwd=clone, check=True, capture_output=True, text=True)
    assert len(listed.stdout.splitlines()) == 1
