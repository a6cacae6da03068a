"""``add_module``: a new module rendered from the patch's template, if upstream does not have one."""

from __future__ import annotations

import textwrap

import pytest
from helpers import load, make_edit, make_patch

from rewriter.engine import apply_series
from rewriter.errors import DriftError
from rewriter.ops.add_module import add_module
from rewriter.ops.base import Status

PATH = "megatron/core/_primus/te_kwargs.py"

CODE = '''
"""Primus helpers for TransformerEngine keyword arguments."""


def keep_cache_kwargs(config):
    if getattr(config, "no_fp8_weight_transpose_cache", False):
        return {"keep_fp8_weight_transpose_cache": False}
    return {}
'''


def module_edit(code=CODE):
    return make_edit("add_module", file=PATH, target=None, code=code, template="te_kwargs.py.j2")


def test_new_module_is_created_with_the_rendered_code():
    """No such file upstream: APPLIED, and the text is the rendered template exactly."""
    status, text, message = add_module(module_edit(), None)
    assert status is Status.APPLIED
    assert text == textwrap.dedent(CODE)
    assert message == ""


def test_applying_again_is_present_and_unchanged():
    """Idempotence: on its own output the edit is PRESENT and returns the same text."""
    _, text, _ = add_module(module_edit(), None)
    status, again, message = add_module(module_edit(), text)
    assert status is Status.PRESENT
    assert again == text
    assert message == ""


def test_created_module_runs():
    """The written module is the working code: executing it defines the helper."""
    _, text, _ = add_module(module_edit(), None)
    keep_cache_kwargs = load(text)["keep_cache_kwargs"]

    class Config:
        no_fp8_weight_transpose_cache = True

    assert keep_cache_kwargs(Config()) == {"keep_fp8_weight_transpose_cache": False}
    assert keep_cache_kwargs(object()) == {}


# --- no change, missing, ambiguous --------------------------------------------------------------


def test_upstream_module_with_the_same_text_is_present():
    """Upstream ships exactly this module: PRESENT, upstream's text kept (the patch can retire)."""
    upstream = textwrap.dedent(CODE)
    status, text, _ = add_module(module_edit(), upstream)
    assert status is Status.PRESENT
    assert text is upstream


def test_upstream_module_with_other_text_is_ambiguous():
    """Upstream has a file there with other content: AMBIGUOUS, upstream's text kept, path named."""
    upstream = '"""Upstream\'s own module."""\n'
    status, text, message = add_module(module_edit(), upstream)
    assert status is Status.AMBIGUOUS
    assert text == upstream
    assert PATH in message


def test_text_differing_only_in_layout_is_still_a_conflict():
    """The comparison is of text, not of Python: a reformatted copy is another file."""
    upstream = textwrap.dedent(CODE).replace("    return {}", "    return dict()")
    status, _, _ = add_module(module_edit(), upstream)
    assert status is Status.AMBIGUOUS


def test_edit_on_a_module_that_does_not_exist_is_missing():
    """Through the engine: an edit of a file neither upstream nor a patch creates is MISSING."""
    edit = make_edit("insert_statements", file=PATH, target="keep_cache_kwargs", guard="True",
                     code="pass\n", where="start")
    with pytest.raises(DriftError, match=r"anchor-missing: file megatron/core/_primus/te_kwargs.py does not exist"):
        apply_series([make_patch("fast_path", [edit])], lambda path: None, "test-upstream")


# --- through the engine -------------------------------------------------------------------------


def create_then_extend():
    """Patch ``first`` adds the module; patch ``second`` inserts statements into it."""
    create = make_patch("first", [module_edit()])
    extend = make_patch("second", [make_edit(
        "insert_statements", file=PATH, target="keep_cache_kwargs", guard="config.second",
        code="return {}\n", where="start")])
    return [create, extend]


def test_engine_creates_the_module_and_a_later_patch_edits_it():
    """``add_module`` then an edit of the new module in a later patch: both apply, in order."""
    result = apply_series(create_then_extend(), lambda path: None, "test-upstream", verify=False)

    assert [(r.patch, r.status) for r in result.reports] == [("first", "applied"), ("second", "applied")]
    assert result.text_after(PATH, {"first"}) == textwrap.dedent(CODE)
    assert "    # primus: second\n    if config.second:\n        return {}\n" in result.text_after(PATH, {"first", "second"})
    assert result.tree({"first"}) == {PATH: textwrap.dedent(CODE)}


def test_engine_reports_a_conflicting_upstream_module_as_drift():
    """A file of another content upstream stops the build with a message naming the patch."""
    with pytest.raises(DriftError, match=r"patch fast_path edits\[0\] \(add_module\).*ambiguous.*already exists upstream"):
        apply_series([make_patch("fast_path", [module_edit()])], lambda path: "x = 1\n", "test-upstream")


def test_engine_retires_a_module_that_upstream_already_ships():
    """Upstream has the same module: the patch's only edit is present, so the patch is retired."""
    patch = make_patch("fast_path", [module_edit()])
    result = apply_series([patch], lambda path: textwrap.dedent(CODE), "test-upstream")
    assert [r.status for r in result.reports] == ["already-present"]
    assert result.patch_status(patch) == "retired"
    assert result.tree({"fast_path"}) == {}


def test_engine_verifies_a_created_module_that_a_later_patch_edits():
    """The second pass must accept a created module that a later edit extended (the file differs
    from the template only by that later edit's own, present, insertion)."""
    result = apply_series(create_then_extend(), lambda path: None, "test-upstream")
    assert [r.status for r in result.reports] == ["applied", "applied"]
