"""``add_config_field``: a flag becomes a documented, validated field of a config dataclass."""

from __future__ import annotations

import ast
import dataclasses
import re
import warnings

import pytest
from helpers import apply_in_series, assert_not_applied, assert_op, load, make_flag, run_op

from rewriter.ops.add_config_field import AddConfigFieldOp
from rewriter.ops.base import Status

CONFIG = '''
from dataclasses import dataclass


@dataclass
class TransformerConfig:
    """Configuration of a transformer."""

    num_layers: int = 2
    """Number of transformer layers."""

    hidden_size: int = 8
    """Width of the hidden states."""

    def __post_init__(self):
        """Check the options."""
        if self.num_layers < 1:
            raise ValueError("num_layers must be positive")
'''


def config_edit(flag, patch_id=None):
    """Edit keywords adding ``flag`` to ``TransformerConfig``."""
    return {"target": "TransformerConfig", "flag": flag.name, "flags": [flag], "patch_id": patch_id or flag.name}


def test_bool_field_goes_after_the_last_field_and_its_docstring():
    """The field (with the description as docstring) follows the last field; the check opens __post_init__."""
    flag = make_flag("fast_path", "bool", False, description="Use the fast path.")
    assert_op(
        AddConfigFieldOp,
        CONFIG,
        '''
        from dataclasses import dataclass


        @dataclass
        class TransformerConfig:
            """Configuration of a transformer."""

            num_layers: int = 2
            """Number of transformer layers."""

            hidden_size: int = 8
            """Width of the hidden states."""
            # primus: fast_path
            fast_path: bool = False
            """Use the fast path."""

            def __post_init__(self):
                """Check the options."""
                # primus: fast_path
                if not isinstance(self.fast_path, bool):
                    raise TypeError(f"TransformerConfig.fast_path must be bool, got {self.fast_path!r}")
                if self.num_layers < 1:
                    raise ValueError("num_layers must be positive")
        ''',
        **config_edit(flag),
    )


def test_str_field_with_choices_is_validated_against_them():
    """A field with choices gets a type check, then an ``elif`` rejecting any other value."""
    flag = make_flag(
        "moe_router_force_load_balancing_type", "str", "uniform", choices=("uniform", "even"),
        description="How forced balancing routes tokens.",
    )
    assert_op(
        AddConfigFieldOp,
        CONFIG,
        '''
        from dataclasses import dataclass


        @dataclass
        class TransformerConfig:
            """Configuration of a transformer."""

            num_layers: int = 2
            """Number of transformer layers."""

            hidden_size: int = 8
            """Width of the hidden states."""
            # primus: moe_router_force_load_balancing (flag moe_router_force_load_balancing_type)
            moe_router_force_load_balancing_type: str = 'uniform'
            """How forced balancing routes tokens."""

            def __post_init__(self):
                """Check the options."""
                # primus: moe_router_force_load_balancing (flag moe_router_force_load_balancing_type)
                if not isinstance(self.moe_router_force_load_balancing_type, str):
                    raise TypeError(f"TransformerConfig.moe_router_force_load_balancing_type must be str, got {self.moe_router_force_load_balancing_type!r}")
                elif self.moe_router_force_load_balancing_type not in ('uniform', 'even'):
                    raise ValueError(f"TransformerConfig.moe_router_force_load_balancing_type must be one of uniform, even, got {self.moe_router_force_load_balancing_type!r}")
                if self.num_layers < 1:
                    raise ValueError("num_layers must be positive")
        ''',
        **config_edit(flag, patch_id="moe_router_force_load_balancing"),
    )


def test_patched_config_accepts_valid_values_and_rejects_bad_ones():
    """Execute it: the default and every choice construct; a wrong type or unknown choice raises."""
    flag = make_flag("routing_mode", "str", "uniform", choices=("uniform", "even"))
    text = run_op(AddConfigFieldOp, CONFIG, **config_edit(flag)).module.code
    config_cls = load(text)["TransformerConfig"]

    assert config_cls().routing_mode == "uniform"
    assert config_cls(routing_mode="even").routing_mode == "even"
    assert [f.name for f in dataclasses.fields(config_cls)] == ["num_layers", "hidden_size", "routing_mode"]
    with pytest.raises(ValueError, match="routing_mode must be one of uniform, even, got 'random'"):
        config_cls(routing_mode="random")
    with pytest.raises(TypeError, match="routing_mode must be str, got 1"):
        config_cls(routing_mode=1)
    with pytest.raises(ValueError, match="num_layers must be positive"):
        config_cls(num_layers=0)  # upstream's own check still runs


@pytest.mark.parametrize(
    ("flag_type", "default", "good", "bad"),
    [
        ("bool", False, True, 1),
        ("int", 4, 8, True),  # a bool is not an int option
        ("float", 0.5, 2, "0.5"),  # an int is a fine float
        ("str", "a", "b", None),
    ],
)
def test_type_check_of_each_flag_type(flag_type, default, good, bad):
    """The generated check accepts values of the flag's type and rejects others with TypeError."""
    flag = make_flag("opt", flag_type, default)
    config_cls = load(run_op(AddConfigFieldOp, CONFIG, **config_edit(flag)).module.code)["TransformerConfig"]
    assert config_cls().opt == default
    assert config_cls(opt=good).opt == good
    with pytest.raises(TypeError, match=f"TransformerConfig.opt must be {flag_type}, got"):
        config_cls(opt=bad)


def test_nullable_field_accepts_none():
    """``nullable: true``: the annotation says ``| None`` and None passes the check."""
    flag = make_flag("max_tokens", "int", None, nullable=True)
    text = run_op(AddConfigFieldOp, CONFIG, **config_edit(flag)).module.code
    assert "    max_tokens: int | None = None\n" in text
    config_cls = load(text)["TransformerConfig"]
    assert config_cls().max_tokens is None
    assert config_cls(max_tokens=3).max_tokens == 3
    with pytest.raises(TypeError, match="must be int or None"):
        config_cls(max_tokens="3")


def test_class_without_fields_gets_the_field_after_its_docstring():
    """No field yet: the new one goes after the class docstring, before the methods."""
    assert_op(
        AddConfigFieldOp,
        '''
        class Empty:
            """Nothing yet."""

            def __post_init__(self):
                pass
        ''',
        '''
        class Empty:
            """Nothing yet."""
            # primus: fast_path
            fast_path: bool = False
            """Use the fast path."""

            def __post_init__(self):
                # primus: fast_path
                if not isinstance(self.fast_path, bool):
                    raise TypeError(f"Empty.fast_path must be bool, got {self.fast_path!r}")
                pass
        ''',
        target="Empty",
        flag="fast_path",
    )


def test_two_patches_add_fields_and_checks_in_series_order():
    """A second flag's field follows the first's, and its check follows the first's check."""
    first = make_flag("first_opt")
    second = make_flag("second_opt", "int", 0)
    text = apply_in_series(
        CONFIG,
        [
            (AddConfigFieldOp, config_edit(first)),
            (AddConfigFieldOp, config_edit(second)),
        ],
    )
    assert text.index("first_opt: bool") < text.index("second_opt: int") < text.index("def __post_init__")
    post_init = text[text.index("def __post_init__"):]
    assert post_init.index('"""Check the options."""') < post_init.index("self.first_opt") < post_init.index(
        "self.second_opt") < post_init.index("if self.num_layers < 1")


def test_description_is_the_fields_docstring_exactly():
    """The attribute docstring holds the description text, whatever quotes or backslashes it has."""
    description = 'Routing: "uniform" keeps upstream, "even" spreads tokens; see C:\\new\\docs and """notes"""'
    flag = make_flag("routing", "str", "uniform", description=description)
    result = run_op(AddConfigFieldOp, CONFIG, **config_edit(flag))
    assert result.status is Status.APPLIED
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid escape sequence" either
        tree = ast.parse(result.module.code)
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    field_at = next(i for i, n in enumerate(body) if isinstance(n, ast.AnnAssign) and n.target.id == "routing")
    # (a literal triple quote cannot end up inside a triple-quoted docstring; it becomes ''')
    assert body[field_at + 1].value.value == description.replace('"""', "'''")


def test_description_ending_with_a_quote():
    """A description that ends with ``"`` must not run into the closing quotes (it did not parse)."""
    flag = make_flag("routing", "str", "even", description='Default mode is "even"')
    result = run_op(AddConfigFieldOp, CONFIG, **config_edit(flag))
    assert result.status is Status.APPLIED
    assert load(result.module.code)["TransformerConfig"]().routing == "even"


# --- no change, missing, ambiguous --------------------------------------------------------------


def test_class_already_having_the_field_is_present():
    """Upstream has a field of that name: PRESENT, text untouched — this is how a patch is retired."""
    flag = make_flag("moe_router_force_load_balancing", "bool", False)
    result = assert_not_applied(
        AddConfigFieldOp,
        '''
        @dataclass
        class TransformerConfig:
            moe_router_force_load_balancing: bool = False
            """Upstream's own option (added in 0.13.1)."""

            def __post_init__(self):
                pass
        ''',
        Status.PRESENT,
        **config_edit(flag),
    )
    assert "already has field 'moe_router_force_load_balancing'" in result.message


def test_field_of_another_type_upstream_is_still_present():
    """Only the name is compared: upstream's field with another default still retires the edit."""
    flag = make_flag("fast_path", "bool", False)
    assert_not_applied(
        AddConfigFieldOp,
        '''
        @dataclass
        class TransformerConfig:
            fast_path: int = 3

            def __post_init__(self):
                pass
        ''',
        Status.PRESENT,
        **config_edit(flag),
    )


def test_no_post_init_is_missing():
    """Without ``__post_init__`` there is nowhere to validate the field: MISSING, nothing added."""
    flag = make_flag("fast_path")
    result = assert_not_applied(
        AddConfigFieldOp,
        '''
        @dataclass
        class TransformerConfig:
            num_layers: int = 2
            """Number of transformer layers."""
        ''',
        Status.MISSING,
        **config_edit(flag),
    )
    assert "__post_init__" in result.message


def test_missing_class_reports_nearest_names():
    """A renamed class: MISSING, with the closest class names as candidates."""
    flag = make_flag("fast_path")
    result = assert_not_applied(
        AddConfigFieldOp,
        CONFIG.replace("class TransformerConfig", "class TransformerConfigBase"),
        Status.MISSING,
        **config_edit(flag),
    )
    assert result.candidates[0] == "TransformerConfigBase"


def test_function_target_is_missing():
    """A function of that name is not a class to add a field to."""
    flag = make_flag("fast_path")
    result = assert_not_applied(
        AddConfigFieldOp,
        """
        def TransformerConfig(**kwargs):
            return kwargs
        """,
        Status.MISSING,
        **config_edit(flag),
    )
    assert "not a class" in result.message


def test_class_defined_in_both_branches_is_ambiguous():
    """``if HAVE_TE:`` / ``else:`` both define the class: AMBIGUOUS with the count."""
    flag = make_flag("fast_path")
    result = assert_not_applied(
        AddConfigFieldOp,
        '''
        if HAVE_TE:
            @dataclass
            class TransformerConfig:
                num_layers: int = 2

                def __post_init__(self):
                    pass
        else:
            @dataclass
            class TransformerConfig:
                num_layers: int = 2

                def __post_init__(self):
                    pass
        ''',
        Status.AMBIGUOUS,
        **config_edit(flag),
    )
    assert result.count == 2


@pytest.mark.parametrize(("flag_type", "good", "bad"), [
    ("list[int]", [1, 3], [[1, True], [1, "3"], (1, 3), 4]),
    ("list[str]", ["a"], [["a", 1], "a"]),
])
def test_list_field_defaults_to_none_and_checks_every_item(flag_type: str, good: list, bad: list) -> None:
    """A list-typed flag (``decoder_pipeline_manual_split_list``) is ``list[T] | None = None``; each item is
    checked (a bool is not an int), and a tuple or a bare value is refused."""
    flag = make_flag("split", flag_type, None, nullable=True)
    text = run_op(AddConfigFieldOp, CONFIG, **config_edit(flag)).module.code
    assert f"split: {flag_type} | None = None" in text
    config_cls = load(text)["TransformerConfig"]
    assert config_cls().split is None
    assert config_cls(split=good).split == good
    for value in bad:
        with pytest.raises(TypeError, match=rf"split must be {re.escape(flag_type)} or None, got"):
            config_cls(split=value)
