"""``import_module``: a module of another release, read from its tree, imports rewritten to the new package."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import pytest
from helpers import make_edit, make_patch

from rewriter.engine import apply_series
from rewriter.errors import DriftError
from rewriter.ops.import_rewrite import Missing, rewrite_imports

OLD = "megatron/core/transformer/moe"
NEW = "megatron/core/_primus/old_moe"

LAYER = '''\
# Copyright (c) 2023, upstream.

from typing import Union

from megatron.core import parallel_state
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.moe.experts import GroupedMLP, SequentialMLP
from megatron.core.transformer.moe import grouped_gemm_util as gg
from .router import (
    TopKRouter,
    Router,
)
from . import moe_utils


class MoELayer:
    experts = (GroupedMLP, SequentialMLP, MLP, MLPSubmodules, gg, TopKRouter, Router, moe_utils)
'''

UTILS = '''\
import torch


class AuxLossScaler:
    scale = 1.0


def helper():
    return 1
'''

RELEASE_FILES = {
    f"{OLD}/moe_layer.py": LAYER,
    f"{OLD}/moe_utils.py": UTILS,
    f"{OLD}/experts.py": "class SequentialMLP: pass\nclass GroupedMLP: pass\n",
    f"{OLD}/router.py": "class TopKRouter: pass\nclass Router: pass\n",
}
PINNED_FILES = {f"{OLD}/moe_utils.py": "class AuxLossScaler:\n    scale = None\n"}


@dataclass
class FakeRelease:
    version: str = "0.10.0"
    tag: str | None = "core_r0.10.0"
    digest: str = "sha256:release"
    files: dict[str, str] = field(default_factory=lambda: dict(RELEASE_FILES))
    reads: list[str] = field(default_factory=list)

    def read(self, rel: str) -> str | None:
        self.reads.append(rel)
        return self.files.get(rel)


def imp(name: str, **args) -> object:
    return make_edit("import_module", file=f"{NEW}/{name}.py", target=None, from_release="0.10.0",
                     args={"source": f"{OLD}/{name}.py"}, **args)


def run(edits, release=None, pinned=None, verify=True):
    release = release or FakeRelease()
    pinned = PINNED_FILES if pinned is None else pinned
    return apply_series([make_patch("old_moe", edits)], pinned.get, "test-upstream", verify=verify,
                        releases=lambda v: release)


MOVES = {f"megatron.core.transformer.moe.{m}": f"megatron.core._primus.old_moe.{m}"
         for m in ("moe_layer", "experts", "router", "moe_utils", "grouped_gemm_util")}


def test_imports_of_moved_modules_are_rewritten_and_others_kept():
    """Moved modules (absolute, ``from package import module``, relative) point to the new
    package; the pinned upstream's modules stay; a redirect splits a statement; layout is kept."""
    out = rewrite_imports(LAYER, source=f"{OLD}/moe_layer.py", moves=MOVES,
                          redirects={"megatron.core.transformer.mlp.MLP": "megatron.core._primus.compat.MLP"},
                          use_pinned=[], header="# primus: imported\n")
    assert out == textwrap.dedent('''\
        # Copyright (c) 2023, upstream.

        # primus: imported
        from typing import Union

        from megatron.core import parallel_state
        from megatron.core._primus.compat import MLP
        from megatron.core.transformer.mlp import MLPSubmodules
        from megatron.core._primus.old_moe.experts import GroupedMLP, SequentialMLP
        from megatron.core._primus.old_moe import grouped_gemm_util as gg
        from megatron.core._primus.old_moe.router import (
            TopKRouter,
            Router,
        )
        from megatron.core._primus.old_moe import moe_utils


        class MoELayer:
            experts = (GroupedMLP, SequentialMLP, MLP, MLPSubmodules, gg, TopKRouter, Router, moe_utils)
        ''')
    compile(out, "moe_layer.py", "exec")


def test_relative_import_of_a_module_that_does_not_move_becomes_absolute():
    out = rewrite_imports("from .token_dispatcher import Dispatcher\nfrom ..mlp import MLP\n",
                          source=f"{OLD}/moe_layer.py", moves={}, redirects={}, use_pinned=[])
    assert out == ("from megatron.core.transformer.moe.token_dispatcher import Dispatcher\n"
                   "from megatron.core.transformer.mlp import MLP\n")


def test_redirect_to_another_name_keeps_the_local_name():
    out = rewrite_imports("from a.b import C, D\n", source="a/x.py", moves={}, redirects={"a.b.C": "z.y.New"},
                          use_pinned=[])
    assert out == "from z.y import New as C\nfrom a.b import D\n"


def test_use_pinned_replaces_the_definition_by_the_pinned_import():
    out = rewrite_imports(UTILS, source=f"{OLD}/moe_utils.py", moves=MOVES, redirects={}, use_pinned=["AuxLossScaler"])
    assert "class AuxLossScaler" not in out
    assert ("from megatron.core.transformer.moe.moe_utils import AuxLossScaler  "
            "# primus: the pinned upstream's definition\n") in out
    assert "def helper():" in out


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"redirects": {"a.b.Nope": "z.Y"}}, "imports: a.b.Nope not imported by a/x.py"),
    ({"use_pinned": ["Nope"]}, "use_pinned: Nope not defined at the top level of a/x.py"),
])
def test_names_the_source_does_not_have_are_missing(kwargs, message):
    args = {"moves": {}, "redirects": {}, "use_pinned": [], **kwargs}
    with pytest.raises(Missing, match=message):
        rewrite_imports("from a.b import C\n", source="a/x.py", **args)


def test_plain_import_of_a_moved_module_without_as_is_refused():
    with pytest.raises(Missing, match="binds 'megatron'"):
        rewrite_imports("import megatron.core.transformer.moe.experts\n", source="a/x.py", moves=MOVES,
                        redirects={}, use_pinned=[])


# --- through the engine -------------------------------------------------------------------------


def test_engine_imports_from_the_release_and_records_digests():
    """The file is created from the release's source (APPLIED), moves cover every module the
    patch imports, and the resolved edit carries the source and release digests; the second
    pass (verify) finds it PRESENT."""
    release = FakeRelease()
    edits = [imp("moe_layer"), imp("experts"), imp("router"),
             imp("moe_utils", use_pinned=["AuxLossScaler"])]
    result = run(edits, release)
    assert [r.status for r in result.reports] == ["applied"] * 4
    text = result.text_after(f"{NEW}/moe_layer.py", {"old_moe"})
    assert "from megatron.core._primus.old_moe.experts import GroupedMLP, SequentialMLP\n" in text
    assert "from megatron.core.transformer.moe import grouped_gemm_util as gg\n" in text  # not imported: stays
    assert "# primus: old_moe: imported from megatron-core 0.10.0 (core_r0.10.0, source digest sha256:release)" in text
    resolved = result.series[0].edits[0]
    assert resolved.args["release_digest"] == "sha256:release"
    assert len(resolved.args["source_sha256"]) == 64
    assert set(resolved.args["moves"]) == {f"megatron.core.transformer.moe.{m}" for m in ("moe_layer", "experts", "router", "moe_utils")}


def test_a_later_edit_of_the_same_patch_adapts_the_imported_file():
    edits = [imp("experts"), make_edit("insert_statements", file=f"{NEW}/experts.py", target="GroupedMLP",
                                       guard="old_moe", where="start", code="x = 1\n")]
    with pytest.raises(DriftError, match="anchor-missing"):  # GroupedMLP is a class, not a function
        run(edits)
    release = FakeRelease(files={f"{OLD}/experts.py": "def build():\n    return 1\n"})
    edits = [imp("experts"), make_edit("insert_statements", file=f"{NEW}/experts.py", target="build",
                                       guard="old_moe", where="start", code="return 2\n")]
    result = run(edits, release)
    assert "if old_moe:\n        return 2\n" in result.text_after(f"{NEW}/experts.py", {"old_moe"})


def test_missing_source_in_the_release_stops_the_build():
    with pytest.raises(DriftError, match=r"anchor-missing: megatron/core/transformer/moe/nope.py is not in "
                                         r"megatron-core 0.10.0 \(core_r0.10.0\)"):
        run([imp("nope")])


def test_use_pinned_name_the_pinned_upstream_lacks_stops_the_build():
    with pytest.raises(DriftError, match="use_pinned helper not defined at the top level of "
                                         "megatron/core/transformer/moe/moe_utils.py of upstream test-upstream"):
        run([imp("moe_utils", use_pinned=["helper"])])


def test_existing_file_with_other_content_is_a_conflict():
    edits = [imp("experts")]
    with pytest.raises(DriftError, match="ambiguous.*already exists upstream"):
        apply_series([make_patch("old_moe", edits)], lambda p: "x = 1\n" if p.startswith(NEW) else None,
                     "test-upstream", releases=lambda v: FakeRelease())


def test_without_a_release_resolver_the_series_cannot_import():
    from rewriter.errors import ApplyError

    with pytest.raises(ApplyError, match="no release resolver"):
        apply_series([make_patch("old_moe", [imp("experts")])], lambda p: None, "test-upstream")
