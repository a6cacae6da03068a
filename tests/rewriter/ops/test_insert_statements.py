"""``insert_statements``: flag-guarded statements at the start, end, before returns, or around an anchor."""

from __future__ import annotations

from helpers import apply_in_series, assert_not_applied, assert_op, load, make_edit, make_flag, make_patch, run_op

from rewriter.engine import apply_series
from rewriter.ops.base import Status
from rewriter.ops.insert_statements import InsertStatementsOp

GUARD = "config.fast_path"


def insert(**kwargs):
    """Edit keywords for the common case: the default guard, patch and target ``f``."""
    return {"guard": GUARD, **kwargs}


# --- where: start / end -------------------------------------------------------------------------


def test_start_inserts_before_the_first_statement():
    """``where: start`` puts the guarded block first in the body."""
    assert_op(
        InsertStatementsOp,
        """
        def f(config, x):
            y = x + 1
            return y
        """,
        """
        def f(config, x):
            # primus: fast_path
            if config.fast_path:
                x = x * 2
            y = x + 1
            return y
        """,
        **insert(where="start", code="x = x * 2\n"),
    )


def test_start_goes_after_the_docstring():
    """``where: start`` keeps the docstring the first statement, so it stays the docstring."""
    assert_op(
        InsertStatementsOp,
        '''
        def f(config, x):
            """Add one."""
            y = x + 1
            return y
        ''',
        '''
        def f(config, x):
            """Add one."""
            # primus: fast_path
            if config.fast_path:
                x = x * 2
            y = x + 1
            return y
        ''',
        **insert(where="start", code="x = x * 2\n"),
    )


def test_end_appends_after_the_last_statement():
    """``where: end`` appends to a function that falls off its end."""
    assert_op(
        InsertStatementsOp,
        """
        def setup(config, hooks):
            hooks.append("upstream")
        """,
        """
        def setup(config, hooks):
            hooks.append("upstream")
            # primus: fast_path
            if config.fast_path:
                hooks.append("primus")
        """,
        **insert(target="setup", where="end", code='hooks.append("primus")\n'),
    )


def test_end_refuses_a_function_that_ends_with_return():
    """Code after a final ``return`` would never run: ``where: end`` says to use before_return."""
    result = assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x):
            return x
        """,
        Status.MISSING,
        **insert(where="end", code="x = 0\n"),
    )
    assert "before_return" in result.message


def test_multi_statement_code_is_guarded_as_one_block():
    """Every line of the rendered code goes inside the one guarded block."""
    assert_op(
        InsertStatementsOp,
        """
        def f(config, x):
            return x
        """,
        """
        def f(config, x):
            # primus: fast_path
            if config.fast_path:
                import math

                x = math.floor(x)
            return x
        """,
        **insert(where="start", code="import math\n\nx = math.floor(x)\n"),
    )


# --- where: before_return -----------------------------------------------------------------------


def test_before_return_guards_every_return():
    """Both returns (one inside an ``if``) get the block, each at its own indentation."""
    assert_op(
        InsertStatementsOp,
        """
        def routing(self, logits):
            if self.config.skip:
                probs = logits
                return probs
            probs = logits.softmax()
            return probs
        """,
        """
        def routing(self, logits):
            if self.config.skip:
                probs = logits
                # primus: fast_path
                if self.config.fast_path:
                    probs = even(probs)
                return probs
            probs = logits.softmax()
            # primus: fast_path
            if self.config.fast_path:
                probs = even(probs)
            return probs
        """,
        **insert(target="routing", where="before_return", expect=2, guard="self.config.fast_path", code="probs = even(probs)\n"),
    )


def test_before_return_finds_returns_in_loops_and_try_blocks():
    """Returns inside ``for``, ``try`` and ``except`` blocks are the function's own returns too."""
    result = run_op(
        InsertStatementsOp,
        """
        def f(config, xs):
            for x in xs:
                if x:
                    return x
            try:
                return xs[0]
            except IndexError:
                return None
        """,
        **insert(where="before_return", expect=3, code="log()\n"),
    )
    assert result.status is Status.APPLIED
    assert result.count == 3


def test_before_return_with_fewer_returns_than_expected_is_ambiguous():
    """One return where the patch expects two: upstream changed shape, so the edit stops."""
    result = assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x):
            return x
        """,
        Status.AMBIGUOUS,
        **insert(where="before_return", expect=2, code="x = 0\n"),
    )
    assert result.count == 1
    assert "expects 2" in result.message


def test_before_return_with_more_returns_than_expected_is_ambiguous():
    """Two returns where the patch expects one: AMBIGUOUS, with the number found."""
    result = assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x):
            if x:
                return 1
            return x
        """,
        Status.AMBIGUOUS,
        **insert(where="before_return", expect=1, code="x = 0\n"),
    )
    assert result.count == 2


def test_before_return_without_any_return_is_missing():
    """A function with no return statement has no site for ``before_return``."""
    assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x):
            print(x)
        """,
        Status.MISSING,
        **insert(where="before_return", code="x = 0\n"),
    )


def test_already_present_at_only_some_returns_is_ambiguous():
    """The block before one return but not the other is neither applied nor present."""
    result = assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x):
            if x:
                # primus: fast_path
                if config.fast_path:
                    x = 0
                return 1
            return x
        """,
        Status.AMBIGUOUS,
        **insert(where="before_return", expect=2, code="x = 0\n"),
    )
    assert "1 of 2" in result.message


def test_before_return_refuses_a_return_in_a_one_line_suite():
    """``if x: return 1`` cannot get statements before its return without reformatting upstream:
    the op says so (and where) instead of silently counting one return fewer."""
    result = run_op(
        InsertStatementsOp,
        """
        def f(config, x):
            if x: return 1
            return x
        """,
        **insert(where="before_return", expect=2, code="x = 0\n"),
    )
    assert result.status is Status.MISSING
    assert "one-line suite ('if x: return 1')" in result.message


# --- where: before / after an anchor ------------------------------------------------------------

TE_INIT = """
class TELinear(te.Linear):
    def __init__(self, input_size, output_size, *, config):
        self.config = config
        extra_kwargs = _get_extra_te_kwargs(config)
        super().__init__(input_size, output_size, **extra_kwargs)
"""


def test_after_anchor():
    """``where: after`` puts the block right after the matched statement."""
    assert_op(
        InsertStatementsOp,
        TE_INIT,
        """
        class TELinear(te.Linear):
            def __init__(self, input_size, output_size, *, config):
                self.config = config
                extra_kwargs = _get_extra_te_kwargs(config)
                # primus: fast_path
                if getattr(config, "fast_path", False):
                    extra_kwargs["keep_fp8_weight_transpose_cache"] = False
                super().__init__(input_size, output_size, **extra_kwargs)
        """,
        target="TELinear.__init__",
        where="after",
        anchor="extra_kwargs = _get_extra_te_kwargs(config)",
        guard='getattr(config, "fast_path", False)',
        code='extra_kwargs["keep_fp8_weight_transpose_cache"] = False\n',
    )


def test_before_anchor():
    """``where: before`` puts the block right before the matched statement."""
    assert_op(
        InsertStatementsOp,
        TE_INIT,
        """
        class TELinear(te.Linear):
            def __init__(self, input_size, output_size, *, config):
                self.config = config
                extra_kwargs = _get_extra_te_kwargs(config)
                # primus: fast_path
                if config.fast_path:
                    extra_kwargs.pop("bias", None)
                super().__init__(input_size, output_size, **extra_kwargs)
        """,
        target="TELinear.__init__",
        where="before",
        anchor="super().__init__(input_size, output_size, **extra_kwargs)",
        **insert(code='extra_kwargs.pop("bias", None)\n'),
    )


def test_after_anchor_inside_a_nested_if_block():
    """An anchor inside an ``if`` block is found, and the block goes in at that depth."""
    assert_op(
        InsertStatementsOp,
        """
        def f(config, x):
            if x > 0:
                y = x * 2
                z = y + 1
            else:
                z = 0
            return z
        """,
        """
        def f(config, x):
            if x > 0:
                y = x * 2
                # primus: fast_path
                if config.fast_path:
                    y = y * 10
                z = y + 1
            else:
                z = 0
            return z
        """,
        **insert(where="after", anchor="y = x * 2", code="y = y * 10\n"),
    )


def test_anchor_matching_ignores_formatting_and_comments():
    """The anchor is compared as Python: spacing, line breaks, trailing commas and comments differ."""
    assert_op(
        InsertStatementsOp,
        """
        def f(config):
            extra_kwargs = _get_extra_te_kwargs(  # upstream wraps this call
                config,
            )
            return extra_kwargs
        """,
        """
        def f(config):
            extra_kwargs = _get_extra_te_kwargs(  # upstream wraps this call
                config,
            )
            # primus: fast_path
            if config.fast_path:
                extra_kwargs["k"] = False
            return extra_kwargs
        """,
        **insert(where="after", anchor="extra_kwargs=_get_extra_te_kwargs( config )", code='extra_kwargs["k"] = False\n'),
    )


def test_anchor_with_a_different_value_does_not_match():
    """Formatting is ignored but meaning is not: ``x = 2`` is not the anchor ``x = 1``."""
    assert_not_applied(
        InsertStatementsOp,
        """
        def f(config):
            x = 2
            return x
        """,
        Status.MISSING,
        **insert(where="after", anchor="x = 1", code="x = 0\n"),
    )


def test_a_function_nested_in_the_target_is_not_entered():
    """The nested function's return and its copy of the anchor are not the target's own."""
    assert_op(
        InsertStatementsOp,
        """
        def f(config, x):
            def helper(v):
                y = v + 1
                return y

            y = helper(x)
            return y
        """,
        """
        def f(config, x):
            def helper(v):
                y = v + 1
                return y

            y = helper(x)
            # primus: fast_path
            if config.fast_path:
                y = -y
            return y
        """,
        **insert(where="before_return", expect=1, code="y = -y\n"),
    )


def test_an_anchor_only_inside_a_nested_function_is_missing():
    """A statement that occurs only in a nested function does not anchor the target's edit."""
    assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x):
            def helper(v):
                y = v + 1
                return y

            return helper(x)
        """,
        Status.MISSING,
        **insert(where="after", anchor="y = v + 1", code="y = 0\n"),
    )


def test_a_class_nested_in_the_target_is_not_entered():
    """Returns of a method of a class defined inside the target are not the target's returns."""
    result = run_op(
        InsertStatementsOp,
        """
        def f(config):
            class Local:
                def get(self):
                    return 1

            return Local()
        """,
        **insert(where="before_return", expect=1, code="pass\n"),
    )
    assert result.status is Status.APPLIED
    assert result.count == 1


# --- several patches at one site ----------------------------------------------------------------


def test_two_patches_after_the_same_anchor_keep_series_order():
    """The second patch goes after the first one's block; both are found again on a second pass."""
    text = apply_in_series(
        """
        def f(config, x):
            y = x + 1
            return y
        """,
        [
            (InsertStatementsOp, dict(patch_id="first", guard="config.first", where="after", anchor="y = x + 1", code="y += 10\n")),
            (InsertStatementsOp, dict(patch_id="second", guard="config.second", where="after", anchor="y = x + 1", code="y *= 2\n")),
        ],
    )
    assert text == (
        "\n"
        "def f(config, x):\n"
        "    y = x + 1\n"
        "    # primus: first\n"
        "    if config.first:\n"
        "        y += 10\n"
        "    # primus: second\n"
        "    if config.second:\n"
        "        y *= 2\n"
        "    return y\n"
    )


def test_two_patches_before_the_same_return_keep_series_order():
    """Backward sites too: the later patch's block sits between the earlier one and the return."""
    text = apply_in_series(
        """
        def f(config, x):
            return x
        """,
        [
            (InsertStatementsOp, dict(patch_id="first", guard="config.first", where="before_return", code="x += 10\n")),
            (InsertStatementsOp, dict(patch_id="second", guard="config.second", where="before_return", code="x *= 2\n")),
        ],
    )
    assert text.index("# primus: first") < text.index("# primus: second") < text.index("return x")
    scope = load(text)

    class Config:
        first = second = True

    assert scope["f"](Config, 1) == 22  # (1 + 10) * 2: series order is execution order


def test_two_patches_at_start_keep_series_order():
    """At the start of a function (after its docstring) the later patch also comes second."""
    text = apply_in_series(
        '''
        def f(config, x):
            """Doc."""
            return x
        ''',
        [
            (InsertStatementsOp, dict(patch_id="first", guard="config.first", where="start", code="x += 10\n")),
            (InsertStatementsOp, dict(patch_id="second", guard="config.second", where="start", code="x *= 2\n")),
        ],
    )
    assert text.index('"""Doc."""') < text.index("# primus: first") < text.index("# primus: second")


def test_two_patches_at_the_same_site_through_the_engine():
    """``apply_series`` (with its second-pass verification) accepts both, in series order."""
    upstream = "def f(config, x):\n    y = x + 1\n    return y\n"

    def patch(pid, code):
        edit = make_edit("insert_statements", target="f", guard=f"config.{pid}", code=code,
                         where="after", anchor="y = x + 1")
        return make_patch(pid, [edit])

    series = [patch("first", "y += 10\n"), patch("second", "y *= 2\n")]
    result = apply_series(series, lambda path: upstream, "test-upstream")
    assert [r.status for r in result.reports] == ["applied", "applied"]
    final = result.files["megatron/core/module.py"].steps[-1][1]
    assert final.index("# primus: first") < final.index("# primus: second")
    assert result.text_after("megatron/core/module.py", {"first"}).count("# primus:") == 1


# --- no change, missing, ambiguous --------------------------------------------------------------


def test_already_present_leaves_the_module_unchanged():
    """The block is already there (with its marker): PRESENT, and the text is untouched."""
    result = assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x):
            y = x + 1
            # primus: fast_path
            if config.fast_path:
                y  =  y * 2   # reformatted by hand
            return y
        """,
        Status.PRESENT,
        **insert(where="after", anchor="y = x + 1", code="y = y * 2\n"),
    )
    assert result.message == ""


def test_unmarked_identical_code_is_not_taken_as_present():
    """Only statements with the ``# primus:`` marker count as earlier insertions."""
    result = run_op(
        InsertStatementsOp,
        """
        def f(config, x):
            y = x + 1
            if config.fast_path:
                y = y * 2
            return y
        """,
        **insert(where="after", anchor="y = x + 1", code="y = y * 2\n"),
    )
    assert result.status is Status.APPLIED


def test_missing_target_reports_nearest_names():
    """A renamed method: MISSING, with the closest qualified names as candidates."""
    result = assert_not_applied(
        InsertStatementsOp,
        TE_INIT,
        Status.MISSING,
        target="TELinear.__int__",
        where="start",
        **insert(code="pass\n"),
    )
    assert "TELinear.__init__" in result.candidates
    assert "not found" in result.message


def test_missing_anchor_reports_nearest_statements():
    """A changed anchor: MISSING, with the function's most similar statements as candidates."""
    result = assert_not_applied(
        InsertStatementsOp,
        TE_INIT,
        Status.MISSING,
        target="TELinear.__init__",
        where="after",
        anchor="extra_kwargs = _get_extra_te_kwargs(self.config)",
        **insert(code="pass\n"),
    )
    assert result.candidates[0] == "extra_kwargs = _get_extra_te_kwargs(config)"


def test_anchor_matching_twice_is_ambiguous():
    """The anchor occurs twice while the patch expects once: AMBIGUOUS, nothing inserted."""
    result = assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x):
            x = normalize(x)
            if x:
                x = normalize(x)
            return x
        """,
        Status.AMBIGUOUS,
        **insert(where="after", anchor="x = normalize(x)", code="pass\n"),
    )
    assert result.count == 2


def test_anchor_matching_twice_applies_when_expected_twice():
    """The same two matches with ``expect: 2`` insert at both."""
    result = run_op(
        InsertStatementsOp,
        """
        def f(config, x):
            x = normalize(x)
            if x:
                x = normalize(x)
            return x
        """,
        **insert(where="after", anchor="x = normalize(x)", expect=2, code="pass\n"),
    )
    assert result.status is Status.APPLIED
    assert result.module.code.count("# primus: fast_path") == 2


def test_target_defined_in_both_branches_is_ambiguous():
    """``if HAVE_TE: class TELinear … else: class TELinear …``: two definitions, AMBIGUOUS."""
    result = assert_not_applied(
        InsertStatementsOp,
        """
        if HAVE_TE:
            class TELinear(te.Linear):
                def __init__(self, config):
                    self.config = config
        else:
            class TELinear:
                def __init__(self, config):
                    raise ImportError("TransformerEngine is required")
        """,
        Status.AMBIGUOUS,
        target="TELinear.__init__",
        where="start",
        **insert(code="pass\n"),
    )
    assert result.count == 2


def test_one_line_function_is_missing():
    """``def f(x): return x`` has no indented block to insert into."""
    result = assert_not_applied(
        InsertStatementsOp,
        """
        def f(config, x): return x
        """,
        Status.MISSING,
        **insert(where="start", code="pass\n"),
    )
    assert "one-line" in result.message


def test_class_target_is_missing():
    """insert_statements needs a function; a class of that name is reported, not edited."""
    result = assert_not_applied(
        InsertStatementsOp,
        TE_INIT,
        Status.MISSING,
        target="TELinear",
        where="start",
        **insert(code="pass\n"),
    )
    assert "not a function" in result.message


def test_marker_names_the_flag_when_it_differs_from_the_patch():
    """The marker comment says which flag guards the block when the flag is not the patch id."""
    result = run_op(
        InsertStatementsOp,
        """
        def f(config, x):
            return x
        """,
        patch_id="even_routing",
        flags=[make_flag("moe_router_even")],
        **insert(where="start", code="pass\n"),
    )
    assert "# primus: even_routing (flag moe_router_even)\n" in result.module.code


# --- executing the patched code -----------------------------------------------------------------


class Config:
    def __init__(self, fast_path):
        self.fast_path = fast_path


def test_patched_function_runs_upstream_with_flag_off_and_inserted_code_with_flag_on():
    """Flag off: exactly upstream's result. Flag on: the inserted statements run as well."""
    text = assert_op(
        InsertStatementsOp,
        """
        def f(config, x):
            calls = ["upstream"]
            y = x + 1
            return y, calls
        """,
        """
        def f(config, x):
            calls = ["upstream"]
            y = x + 1
            # primus: fast_path
            if config.fast_path:
                y = y * 100
                calls.append("primus")
            return y, calls
        """,
        **insert(where="before_return", code='y = y * 100\ncalls.append("primus")\n'),
    )
    f = load(text)["f"]
    assert f(Config(False), 1) == (2, ["upstream"])
    assert f(Config(True), 1) == (200, ["upstream", "primus"])


def test_patched_method_runs_upstream_with_flag_off_and_inserted_code_with_flag_on():
    """The TE-style edit: the extra keyword reaches the base class only when the flag is on."""
    text = assert_op(
        InsertStatementsOp,
        TE_INIT,
        """
        class TELinear(te.Linear):
            def __init__(self, input_size, output_size, *, config):
                self.config = config
                extra_kwargs = _get_extra_te_kwargs(config)
                # primus: fast_path
                if config.fast_path:
                    extra_kwargs["keep_fp8_weight_transpose_cache"] = False
                super().__init__(input_size, output_size, **extra_kwargs)
        """,
        target="TELinear.__init__",
        where="after",
        anchor="extra_kwargs = _get_extra_te_kwargs(config)",
        **insert(code='extra_kwargs["keep_fp8_weight_transpose_cache"] = False\n'),
    )

    class Linear:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class te:  # noqa: N801 - stands in for the transformer_engine module
        pass

    te.Linear = Linear
    scope = load(text, te=te, _get_extra_te_kwargs=lambda config: {"bias": True})
    off = scope["TELinear"](4, 8, config=Config(False))
    on = scope["TELinear"](4, 8, config=Config(True))
    assert (off.args, off.kwargs) == ((4, 8), {"bias": True})
    assert (on.args, on.kwargs) == ((4, 8), {"bias": True, "keep_fp8_weight_transpose_cache": False})



# --- compound-statement header anchors -------------------------------------------------------


def test_before_a_compound_statement_header() -> None:
    """An anchor ending in ':' matches the header of an if/for/with, not its body, not an elif."""
    assert_op(
        InsertStatementsOp,
        """
        def f(config, ctx):
            out = 1
            if ctx.cache and ctx.decode():
                out = 2
            elif ctx.cache and ctx.decode():
                out = 3
            return out
        """,
        """
        def f(config, ctx):
            out = 1
            # primus: fast_path
            if config.fast_path:
                out = out * 10
            if ctx.cache and ctx.decode():
                out = 2
            elif ctx.cache and ctx.decode():
                out = 3
            return out
        """,
        **insert(where="before", anchor="if ctx.cache  and ctx.decode():", code="out = out * 10\n"),
    )


def test_compound_anchor_not_found_lists_headers() -> None:
    result = run_op(
        InsertStatementsOp,
        """
        def f(config, items):
            for item in items:
                pass
        """,
        **insert(where="after", anchor="for thing in items:", code="x = 0\n"),
    )
    assert result.status is Status.MISSING
    assert "for item in items:" in result.candidates
