"""``route_function``: behind the flag, return the new implementation's result; upstream's body stays."""

from __future__ import annotations

import sys
import types

from helpers import assert_not_applied, assert_op, load, run_op

from rewriter.ops.base import Status
from rewriter.ops.route_function import RouteFunctionOp

ROUTE = {"guard": "self.config.fast_path", "to": "megatron.core._primus.fast:forward"}


def test_method_forwards_every_parameter_exactly():
    """self, positional, defaulted, *args, keyword-only and **kwargs are all passed on as received."""
    assert_op(
        RouteFunctionOp,
        """
        class Attention:
            def forward(self, hidden, mask=None, *args, inference_params, rotary=None, **kwargs):
                out = self.core(hidden, mask)
                return out
        """,
        """
        class Attention:
            def forward(self, hidden, mask=None, *args, inference_params, rotary=None, **kwargs):
                # primus: fast_path
                if self.config.fast_path:
                    from megatron.core._primus.fast import forward as _primus_impl

                    return _primus_impl(self, hidden, mask, *args, inference_params=inference_params, rotary=rotary, **kwargs)
                out = self.core(hidden, mask)
                return out
        """,
        target="Attention.forward",
        **ROUTE,
    )


def test_positional_only_and_bare_star_parameters():
    """``/`` and a bare ``*`` are not parameters: positional-only pass by position, kw-only by name."""
    assert_op(
        RouteFunctionOp,
        """
        def scale(x, /, factor, *, inplace=False):
            return x * factor
        """,
        """
        def scale(x, /, factor, *, inplace=False):
            # primus: fast_path
            if FAST:
                from pkg.fast import scale as _primus_impl

                return _primus_impl(x, factor, inplace=inplace)
            return x * factor
        """,
        target="scale",
        guard="FAST",
        to="pkg.fast:scale",
    )


def test_function_without_parameters():
    """No parameters: the implementation is called with no arguments."""
    assert_op(
        RouteFunctionOp,
        """
        def version():
            return "upstream"
        """,
        """
        def version():
            # primus: fast_path
            if FAST:
                from pkg.fast import version as _primus_impl

                return _primus_impl()
            return "upstream"
        """,
        target="version",
        guard="FAST",
        to="pkg.fast:version",
    )


def test_docstring_stays_first_and_upstream_body_is_kept():
    """The guarded return goes after the docstring; upstream's statements follow it untouched."""
    assert_op(
        RouteFunctionOp,
        '''
        class Router:
            def routing(self, logits):
                """Route tokens to experts."""
                scores = logits.softmax(-1)
                # upstream comment survives
                return scores.topk(self.k)
        ''',
        '''
        class Router:
            def routing(self, logits):
                """Route tokens to experts."""
                # primus: fast_path
                if self.config.fast_path:
                    from megatron.core._primus.fast import forward as _primus_impl

                    return _primus_impl(self, logits)
                scores = logits.softmax(-1)
                # upstream comment survives
                return scores.topk(self.k)
        ''',
        target="Router.routing",
        **ROUTE,
    )


def test_routed_method_calls_upstream_with_flag_off_and_implementation_with_flag_on(monkeypatch):
    """Execute it: flag off runs upstream's body; flag on hands every argument to the new function."""
    text = assert_op(
        RouteFunctionOp,
        """
        class Layer:
            def __init__(self, fast_path):
                self.fast_path = fast_path

            def forward(self, x, scale=1, *rest, bias=0, **extra):
                return ("upstream", x * scale + bias)
        """,
        """
        class Layer:
            def __init__(self, fast_path):
                self.fast_path = fast_path

            def forward(self, x, scale=1, *rest, bias=0, **extra):
                # primus: fast_path
                if self.fast_path:
                    from primus_test_impl import forward as _primus_impl

                    return _primus_impl(self, x, scale, *rest, bias=bias, **extra)
                return ("upstream", x * scale + bias)
        """,
        target="Layer.forward",
        guard="self.fast_path",
        to="primus_test_impl:forward",
    )
    impl = types.ModuleType("primus_test_impl")
    impl.forward = lambda *args, **kwargs: ("primus", args, kwargs)
    monkeypatch.setitem(sys.modules, "primus_test_impl", impl)
    layer_cls = load(text)["Layer"]

    off = layer_cls(False)
    assert off.forward(2, 3, bias=1) == ("upstream", 7)

    on = layer_cls(True)
    kind, args, kwargs = on.forward(2, 3, "r1", "r2", bias=1, flavour="x")
    assert kind == "primus"
    assert args == (on, 2, 3, "r1", "r2")
    assert kwargs == {"bias": 1, "flavour": "x"}
    # defaults are forwarded as the values the routed function received
    assert on.forward(5)[1:] == ((on, 5, 1), {"bias": 0})


def test_routed_module_function_with_flag_off_never_imports_the_implementation():
    """Flag off: the implementation module is not even imported (it may not exist upstream)."""
    text = assert_op(
        RouteFunctionOp,
        """
        def f(config, x):
            return x + 1
        """,
        """
        def f(config, x):
            # primus: fast_path
            if config.fast_path:
                from primus_test_absent_module import f as _primus_impl

                return _primus_impl(config, x)
            return x + 1
        """,
        guard="config.fast_path",
        to="primus_test_absent_module:f",
    )

    class Config:
        fast_path = False

    assert load(text)["f"](Config(), 1) == 2


# --- no change, missing, ambiguous --------------------------------------------------------------


def test_already_routed_leaves_the_module_unchanged():
    """The guarded return is already there: PRESENT, text untouched."""
    assert_not_applied(
        RouteFunctionOp,
        '''
        class Router:
            def routing(self, logits):
                """Route tokens to experts."""
                # primus: fast_path
                if self.config.fast_path:
                    from megatron.core._primus.fast import forward as _primus_impl
                    return _primus_impl(self, logits)
                return logits
        ''',
        Status.PRESENT,
        target="Router.routing",
        **ROUTE,
    )


def test_routing_to_another_implementation_is_not_present():
    """A marked block routing elsewhere is another patch's: this one is still applied, after it."""
    result = run_op(
        RouteFunctionOp,
        """
        def f(config, x):
            # primus: other
            if config.other:
                from pkg.other import f as _primus_impl

                return _primus_impl(config, x)
            return x
        """,
        target="f",
        guard="config.fast_path",
        to="pkg.fast:f",
    )
    assert result.status is Status.APPLIED
    code = result.module.code
    assert code.index("# primus: other") < code.index("# primus: fast_path") < code.index("    return x")


def test_missing_target_reports_nearest_names():
    """A renamed method: MISSING, with the closest qualified names as candidates."""
    result = assert_not_applied(
        RouteFunctionOp,
        """
        class TopKRouter:
            def routing(self, logits):
                return logits

            def forward(self, x):
                return self.routing(x)
        """,
        Status.MISSING,
        target="TopKRouter.route",
        **ROUTE,
    )
    assert "TopKRouter.routing" in result.candidates


def test_missing_target_without_similar_names_has_no_candidates():
    """Nothing resembling the target: MISSING with no candidates."""
    result = assert_not_applied(
        RouteFunctionOp,
        """
        def unrelated():
            pass
        """,
        Status.MISSING,
        target="TopKRouter.routing",
        **ROUTE,
    )
    assert result.candidates == ()


def test_one_line_function_is_missing():
    """There is no block to put the guarded return in: MISSING (the anchor the op needs is absent)."""
    result = assert_not_applied(
        RouteFunctionOp,
        """
        def f(config, x): return x
        """,
        Status.MISSING,
        guard="config.fast_path",
        to="pkg.fast:f",
    )
    assert "one-line" in result.message


def test_target_defined_in_both_branches_is_ambiguous():
    """``if HAVE_TE:`` / ``else:`` both define the function: AMBIGUOUS with the count."""
    result = assert_not_applied(
        RouteFunctionOp,
        """
        if HAVE_TE:
            def fused_kernel(x):
                return te_kernel(x)
        else:
            def fused_kernel(x):
                return torch_kernel(x)
        """,
        Status.AMBIGUOUS,
        target="fused_kernel",
        guard="FAST",
        to="pkg.fast:fused_kernel",
    )
    assert result.count == 2
    assert "2 times" in result.message


def test_method_defined_in_both_try_and_except_is_ambiguous():
    """Definitions in ``try`` and ``except`` blocks count as two as well."""
    result = assert_not_applied(
        RouteFunctionOp,
        """
        try:
            from apex import FusedNorm
        except ImportError:
            class FusedNorm:
                def forward(self, x):
                    return x

        class FusedNorm:
            def forward(self, x):
                return x
        """,
        Status.AMBIGUOUS,
        target="FusedNorm.forward",
        guard="FAST",
        to="pkg.fast:forward",
    )
    assert result.count == 2


# --- known problems -----------------------------------------------------------------------------


def test_routed_generator_yields_the_implementations_items(monkeypatch):
    """A generator's ``return value`` ends the iteration: the route must ``yield from`` instead."""
    result = run_op(
        RouteFunctionOp,
        """
        def batches(config, n):
            for i in range(n):
                yield ("upstream", i)
        """,
        target="batches",
        guard="config.fast_path",
        to="primus_test_gen:batches",
    )
    impl = types.ModuleType("primus_test_gen")
    impl.batches = lambda config, n: iter([("primus", i) for i in range(n)])
    monkeypatch.setitem(sys.modules, "primus_test_gen", impl)

    class Config:
        fast_path = True

    assert list(load(result.module.code)["batches"](Config(), 2)) == [("primus", 0), ("primus", 1)]


def test_routed_coroutine_awaits_the_implementation(monkeypatch):
    """``await f()`` with the flag on must give the implementation's result, not a coroutine."""
    import asyncio

    result = run_op(
        RouteFunctionOp,
        """
        async def fetch(config, key):
            return ("upstream", key)
        """,
        target="fetch",
        guard="config.fast_path",
        to="primus_test_async:fetch",
    )
    impl = types.ModuleType("primus_test_async")

    async def fetch(config, key):
        return ("primus", key)

    impl.fetch = fetch
    monkeypatch.setitem(sys.modules, "primus_test_async", impl)

    class Config:
        fast_path = True

    value = asyncio.run(load(result.module.code)["fetch"](Config(), "k"))
    if asyncio.iscoroutine(value):
        value.close()  # don't leave a "never awaited" warning behind
    assert value == ("primus", "k")
