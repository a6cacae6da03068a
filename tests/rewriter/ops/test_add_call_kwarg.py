"""``add_call_kwarg``: one more keyword at a matched call, passed only while the flag is on."""

from __future__ import annotations

from helpers import assert_not_applied, assert_op, load, run_op

from rewriter.ops.add_call_kwarg import AddCallKwargOp
from rewriter.ops.base import Status

KWARG = {
    "target": "build",
    "guard": "config.fast_path",
    "call": "te.Linear",
    "keyword": "keep_fp8_weight_transpose_cache",
    "value": "False",
}


def test_single_line_call():
    """The keyword goes last, after ``, `` like the other arguments."""
    assert_op(
        AddCallKwargOp,
        """
        def build(config, n):
            return te.Linear(n, n, bias=True)
        """,
        """
        def build(config, n):
            return te.Linear(n, n, bias=True, **({'keep_fp8_weight_transpose_cache': False} if config.fast_path else {}))
        """,
        **KWARG,
    )


def test_call_without_arguments():
    """A call with no arguments gets the keyword as its only argument."""
    assert_op(
        AddCallKwargOp,
        """
        def build(config):
            return te.Linear()
        """,
        """
        def build(config):
            return te.Linear(**({'keep_fp8_weight_transpose_cache': False} if config.fast_path else {}))
        """,
        **KWARG,
    )


def test_multi_line_call_with_trailing_comma_keeps_its_layout():
    """One argument per line with a trailing comma: the new one is another such line."""
    assert_op(
        AddCallKwargOp,
        """
        def build(config, n):
            linear = te.Linear(
                n,
                n,
                bias=True,
            )
            return linear
        """,
        """
        def build(config, n):
            linear = te.Linear(
                n,
                n,
                bias=True,
                **({'keep_fp8_weight_transpose_cache': False} if config.fast_path else {}),
            )
            return linear
        """,
        **KWARG,
    )


def test_multi_line_call_without_trailing_comma_keeps_its_layout():
    """No trailing comma: the new argument gets its own line and the ``)`` stays on its line."""
    assert_op(
        AddCallKwargOp,
        """
        def build(config, n):
            linear = te.Linear(
                n,
                n
            )
            return linear
        """,
        """
        def build(config, n):
            linear = te.Linear(
                n,
                n,
                **({'keep_fp8_weight_transpose_cache': False} if config.fast_path else {})
            )
            return linear
        """,
        **KWARG,
    )


def test_single_argument_on_its_own_line():
    """One argument on a line of its own: the new one is separated by ``, `` on the same line."""
    assert_op(
        AddCallKwargOp,
        """
        def build(config, n):
            return te.Linear(
                n,
            )
        """,
        """
        def build(config, n):
            return te.Linear(
                n, **({'keep_fp8_weight_transpose_cache': False} if config.fast_path else {}),
            )
        """,
        **KWARG,
    )


def test_comments_after_arguments_stay_with_their_arguments():
    """``n,  # out`` keeps its comment; the previous argument's comment is not copied onto it."""
    assert_op(
        AddCallKwargOp,
        """
        def build(config, n, m):
            return te.Linear(
                n,  # in features
                m,  # out features
            )
        """,
        """
        def build(config, n, m):
            return te.Linear(
                n,  # in features
                m,  # out features
                **({'keep_fp8_weight_transpose_cache': False} if config.fast_path else {}),
            )
        """,
        **KWARG,
    )


def test_every_expected_call_is_patched():
    """With ``expect: 2`` both calls get the keyword; a call to something else does not."""
    result = run_op(
        AddCallKwargOp,
        """
        def build(config, n):
            a = te.Linear(n, n)
            b = te.LayerNormLinear(n, n)
            c = te.Linear(n, 1)
            return a, b, c
        """,
        expect=2,
        **KWARG,
    )
    assert result.status is Status.APPLIED
    assert result.count == 2
    assert "te.LayerNormLinear(n, n)\n" in result.module.code
    assert result.module.code.count("keep_fp8_weight_transpose_cache") == 2


def test_calls_in_a_nested_function_are_not_counted():
    """Only the target's own calls match: the helper's call is left alone (expect stays 1)."""
    assert_op(
        AddCallKwargOp,
        """
        def build(config, n):
            def helper():
                return te.Linear(1, 1)

            return te.Linear(n, n), helper()
        """,
        """
        def build(config, n):
            def helper():
                return te.Linear(1, 1)

            return te.Linear(n, n, **({'keep_fp8_weight_transpose_cache': False} if config.fast_path else {})), helper()
        """,
        **KWARG,
    )


def test_patched_call_gets_the_keyword_only_with_the_flag_on():
    """Execute it: flag off passes exactly upstream's arguments; flag on adds the keyword."""
    text = assert_op(
        AddCallKwargOp,
        """
        def build(config, n):
            return te.Linear(n, n, bias=True)
        """,
        """
        def build(config, n):
            return te.Linear(n, n, bias=True, **({'keep_fp8_weight_transpose_cache': False} if config.fast_path else {}))
        """,
        **KWARG,
    )

    class te:  # noqa: N801 - stands in for the transformer_engine module
        @staticmethod
        def Linear(*args, **kwargs):  # noqa: N802 - mirrors te.Linear
            return args, kwargs

    class Config:
        def __init__(self, fast_path):
            self.fast_path = fast_path

    build = load(text, te=te)["build"]
    assert build(Config(False), 4) == ((4, 4), {"bias": True})
    assert build(Config(True), 4) == ((4, 4), {"bias": True, "keep_fp8_weight_transpose_cache": False})


# --- no change, missing, ambiguous --------------------------------------------------------------


def test_keyword_already_passed_upstream_is_present():
    """Upstream passes the keyword itself: PRESENT, text untouched (the patch can be retired)."""
    assert_not_applied(
        AddCallKwargOp,
        """
        def build(config, n):
            return te.Linear(n, n, keep_fp8_weight_transpose_cache=config.keep_cache)
        """,
        Status.PRESENT,
        **KWARG,
    )


def test_already_patched_call_is_present():
    """The guarded ``**{…}`` is already there, even reformatted: PRESENT, text untouched."""
    assert_not_applied(
        AddCallKwargOp,
        """
        def build(config, n):
            return te.Linear(
                n, n,
                **({"keep_fp8_weight_transpose_cache": False} if config.fast_path else {})
            )
        """,
        Status.PRESENT,
        **KWARG,
    )


def test_keyword_at_only_one_of_two_calls_is_ambiguous():
    """One call has the keyword and the other does not: neither applied nor present."""
    result = assert_not_applied(
        AddCallKwargOp,
        """
        def build(config, n):
            a = te.Linear(n, n, keep_fp8_weight_transpose_cache=True)
            b = te.Linear(n, n)
            return a, b
        """,
        Status.AMBIGUOUS,
        expect=2,
        **KWARG,
    )
    assert "1 of 2" in result.message


def test_missing_target_reports_nearest_names():
    """A renamed function: MISSING, with the closest names as candidates."""
    result = assert_not_applied(
        AddCallKwargOp,
        """
        def build_linear(config, n):
            return te.Linear(n, n)
        """,
        Status.MISSING,
        **KWARG,
    )
    assert result.candidates == ("build_linear",)


def test_missing_call_reports_the_calls_that_are_there():
    """The callee was renamed: MISSING, with the similar callees of the function as candidates."""
    result = assert_not_applied(
        AddCallKwargOp,
        """
        def build(config, n):
            return te.pytorch.Linear(n, n), print(n)
        """,
        Status.MISSING,
        **KWARG,
    )
    assert result.candidates == ("te.pytorch.Linear",)
    assert "te.Linear" in result.message


def test_call_matching_twice_is_ambiguous():
    """Two matching calls while the patch expects one: AMBIGUOUS with the count."""
    result = assert_not_applied(
        AddCallKwargOp,
        """
        def build(config, n):
            if config.fused:
                return te.Linear(n, n, fused=True)
            return te.Linear(n, n)
        """,
        Status.AMBIGUOUS,
        **KWARG,
    )
    assert result.count == 2
    assert "expects 1" in result.message


def test_target_defined_in_both_branches_is_ambiguous():
    """``if HAVE_TE:`` / ``else:`` both define the target: AMBIGUOUS with the count."""
    result = assert_not_applied(
        AddCallKwargOp,
        """
        if HAVE_TE:
            def build(config, n):
                return te.Linear(n, n)
        else:
            def build(config, n):
                return torch.nn.Linear(n, n)
        """,
        Status.AMBIGUOUS,
        **KWARG,
    )
    assert result.count == 2
