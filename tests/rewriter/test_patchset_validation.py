"""Patchset validation: every mistake is a PatchsetError naming file:line and the key.

Most cases call the loader directly; the last ones go through the CLI (exit 2, one line, no
output written).
"""

from __future__ import annotations

import pytest
from sample_upstream import PATCH_YAML, Sample, assert_untouched, line_of, one_error_line

from rewriter.cli import main
from rewriter.errors import PatchsetError
from rewriter.patchset.loader import load_patchsets

PATCH = "patchsets/v0.1.0/double_output/patch.yaml"
SERIES = "patchsets/v0.1.0/series.yaml"


def load_error(sample: Sample) -> str:
    with pytest.raises(PatchsetError) as info:
        load_patchsets(sample.patchsets)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


def at(text: str, needle: str, path: str = PATCH) -> str:
    """``file:line`` of the line of ``text`` that contains ``needle``."""
    return f"{path}:{line_of(text, needle)}:"


def test_sample_patchsets_load(sample: Sample) -> None:
    patchsets = load_patchsets(sample.patchsets)
    assert patchsets.names() == ["v0.1.0"]
    (patch,) = patchsets.series()
    assert patch.id == "double_output"
    assert [e.op for e in patch.edits] == ["add_config_field", "insert_statements"]
    assert patch.edits[1].code == "y = y * 2\n"
    assert patch.edits[1].source == f"{PATCH}:{line_of(PATCH_YAML, 'op: insert_statements')}"


def test_malformed_yaml_names_the_line(sample: Sample) -> None:
    text = sample.edit_patch("  status: absent\n", "  status: absent\n   bad: indent\n")
    message = load_error(sample)
    assert message.startswith(at(text, "bad: indent"))
    assert "malformed YAML" in message


def test_duplicate_key(sample: Sample) -> None:
    text = sample.edit_patch("    table: model\n", "    table: model\n    table: module\n")
    message = load_error(sample)
    assert message.startswith(at(text, "table: module"))
    assert "duplicate key 'table'" in message


def test_unknown_key_suggests_the_right_one(sample: Sample) -> None:
    text = sample.edit_patch("summary: Multiply", "summry: Multiply")
    message = load_error(sample)
    assert message.startswith(at(text, "summry:"))
    assert "unknown key 'summry' in patch (did you mean 'summary'?)" in message


def test_unknown_key_in_an_edit(sample: Sample) -> None:
    text = sample.edit_patch("    template: double.py.j2", "    templte: double.py.j2")
    message = load_error(sample)
    assert message.startswith(at(text, "templte:"))
    assert "unknown key 'templte' in edits[1] (insert_statements) (did you mean 'template'?)" in message


def test_unknown_key_without_a_close_match_lists_the_known_ones(sample: Sample) -> None:
    text = sample.edit_patch("  note: upstream", "  zzz: upstream")
    message = load_error(sample)
    assert message.startswith(at(text, "zzz:"))
    assert "unknown key 'zzz' in upstream (known: status, note, retired_when)" in message


@pytest.mark.parametrize(
    ("old", "new", "needle", "expected"),
    [
        ("    vars: {factor: 2}", "    vars: {factor: 2}\n    expect: two", "expect: two",
         "key 'expect' must be int, got str ('two')"),
        ("    vars: {factor: 2}", "    vars: {factor: 2}\n    expect: true", "expect: true",
         "key 'expect' must be int, got bool (True)"),
        ("    vars: {factor: 2}", "    vars: [2]", "vars: [2]", "key 'vars' must be dict, got list ([2])"),
        ("summary: Multiply what scale() returns when the flag is on.", "summary: [a, b]", "summary: [a, b]",
         "key 'summary' must be str, got list"),
    ],
    ids=["str-for-int", "bool-for-int", "list-for-dict", "list-for-str"],
)
def test_wrong_type(sample: Sample, old: str, new: str, needle: str, expected: str) -> None:
    text = sample.edit_patch(old, new)
    message = load_error(sample)
    assert message.startswith(at(text, needle))
    assert expected in message


def test_missing_required_key(sample: Sample) -> None:
    text = sample.edit_patch("    where: before_return\n", "")
    message = load_error(sample)
    assert message.startswith(at(text, "op: insert_statements"))
    assert "edits[1] (insert_statements) is missing required key 'where'" in message


def test_bad_choice(sample: Sample) -> None:
    text = sample.edit_patch("    where: before_return", "    where: before_returns")
    message = load_error(sample)
    assert message.startswith(at(text, "where: before_returns"))
    assert "key 'where' must be one of start, end, before_return, before, after, got 'before_returns'" in message


def test_unknown_operation_suggests_the_right_one(sample: Sample) -> None:
    text = sample.edit_patch("op: insert_statements", "op: insert_statement")
    message = load_error(sample)
    assert message.startswith(at(text, "op: insert_statement"))
    assert "unknown operation 'insert_statement' in edits[1] (did you mean 'insert_statements'?)" in message
    assert "known: add_config_field, insert_statements" in message


def test_unknown_operation_without_a_close_match(sample: Sample) -> None:
    sample.edit_patch("op: insert_statements", "op: frobnicate")
    message = load_error(sample)
    assert "unknown operation 'frobnicate'" in message
    assert "did you mean" not in message


def test_missing_template(sample: Sample) -> None:
    text = sample.edit_patch("template: double.py.j2", "template: doubel.py.j2")
    message = load_error(sample)
    assert message.startswith(at(text, "template: doubel.py.j2"))
    assert "missing template 'doubel.py.j2'" in message
    assert str(sample.patchsets / "v0.1.0" / "double_output") in message


def test_template_with_undefined_variable(sample: Sample) -> None:
    (sample.patchsets / "v0.1.0" / "double_output" / "double.py.j2").write_text("y = y * {{ factor }}\n")
    message = load_error(sample)
    assert message.startswith(at(PATCH_YAML, "template: double.py.j2"))
    assert "template uses an undefined variable: 'factor' is undefined" in message


def test_template_with_undefined_var_entry(sample: Sample) -> None:
    (sample.patchsets / "v0.1.0" / "double_output" / "double.py.j2").write_text("y = y * {{ vars.factr }}\n")
    message = load_error(sample)
    assert message.startswith(at(PATCH_YAML, "template: double.py.j2"))
    assert "undefined variable" in message and "'factr'" in message


def test_template_syntax_error_names_template_line(sample: Sample) -> None:
    (sample.patchsets / "v0.1.0" / "double_output" / "double.py.j2").write_text("y = y\n{% if %}\n")
    message = load_error(sample)
    assert message.startswith(at(PATCH_YAML, "template: double.py.j2"))
    assert "template double.py.j2:2:" in message


def test_rendered_template_must_be_python(sample: Sample) -> None:
    (sample.patchsets / "v0.1.0" / "double_output" / "double.py.j2").write_text("y = = y\n")
    message = load_error(sample)
    assert message.startswith(at(PATCH_YAML, "template: double.py.j2"))
    assert "rendered template is not valid Python (line 1" in message


def test_template_and_code_are_exclusive(sample: Sample) -> None:
    text = sample.edit_patch("    template: double.py.j2\n", "    template: double.py.j2\n    code: y = y * 2\n")
    message = load_error(sample)
    assert message.startswith(at(text, "op: insert_statements"))
    assert "edits[1] needs exactly one of 'template' or 'code'" in message


def _second_version(sample: Sample, patch_yaml: str, patch_id: str = "double_output") -> None:
    sample.write_patchsets({
        "v0.2.0/series.yaml": f"version: v0.2.0\nsummary: Second.\npatches:\n  - {patch_id}\n",
        f"v0.2.0/{patch_id}/patch.yaml": patch_yaml,
        f"v0.2.0/{patch_id}/double.py.j2": "y = y * {{ vars.factor }}\n",
    })


def test_duplicate_patch_id_across_versions(sample: Sample) -> None:
    yaml_v2 = PATCH_YAML.replace("version: v0.1.0", "version: v0.2.0").replace("name: double_output", "name: triple")
    yaml_v2 = yaml_v2.replace("flag: double_output", "flag: triple").replace("config.double_output", "config.triple")
    _second_version(sample, yaml_v2)
    message = load_error(sample)
    assert message.startswith("patchsets/v0.2.0/double_output/patch.yaml:")
    assert "duplicate patch id 'double_output' (also in v0.1.0)" in message


def test_duplicate_flag_across_patches(sample: Sample) -> None:
    yaml_v2 = PATCH_YAML.replace("id: double_output", "id: again").replace("version: v0.1.0", "version: v0.2.0")
    _second_version(sample, yaml_v2, "again")
    message = load_error(sample)
    assert message.startswith("patchsets/v0.2.0/again/patch.yaml:")
    assert "flag 'double_output' is already declared by patch 'double_output'" in message


def test_duplicate_flag_in_one_patch(sample: Sample) -> None:
    flag = PATCH_YAML[PATCH_YAML.index("  - name: double_output"):PATCH_YAML.index("edits:")]
    text = sample.edit_patch(flag, flag + flag)
    message = load_error(sample)
    assert message.startswith(at(text, "flags:"))
    assert "flag 'double_output' declared twice" in message


# a v0.2.0 patch that declares no flag of its own and is gated by v0.1.0's flag
USES_YAML = """\
id: triple_output
summary: Triple instead, when the same flag is on.
implemented_in: core
uses_flags: [double_output]
upstream:
  status: absent
edits:
  - op: insert_statements
    file: megatron/core/transformer/block.py
    target: shift
    where: start
    guard: config.double_output
    template: double.py.j2
    vars: {factor: 3}
"""


def test_uses_flags_of_an_earlier_patch(sample: Sample) -> None:
    """A patch may be gated by an earlier patch's flag instead of declaring its own."""
    _second_version(sample, USES_YAML, "triple_output")
    patch = load_patchsets(sample.patchsets).series()[-1]
    assert patch.flags == () and [f.name for f in patch.uses_flags] == ["double_output"]
    assert [f.name for f in patch.gating_flags] == ["double_output"]


def test_uses_flags_must_be_declared_earlier(sample: Sample) -> None:
    _second_version(sample, USES_YAML.replace("uses_flags: [double_output]", "uses_flags: [quadruple]"), "triple_output")
    message = load_error(sample)
    assert message.startswith("patchsets/v0.2.0/triple_output/patch.yaml:4:")
    assert "uses flag 'quadruple', which no earlier patch declares" in message


def test_a_patch_needs_a_flag_or_uses_one(sample: Sample) -> None:
    _second_version(sample, USES_YAML.replace("uses_flags: [double_output]\n", ""), "triple_output")
    message = load_error(sample)
    assert "a patch declares at least one flag, or uses_flags of an earlier patch" in message


def test_flag_version_out_of_order(sample: Sample) -> None:
    text = sample.edit_patch("    version: v0.1.0", "    version: v0.2.0")
    message = load_error(sample)
    assert message.startswith(at(text, "version: v0.2.0"))
    assert "flag 'double_output' says version 'v0.2.0' but lives in patchset v0.1.0" in message
    assert "versions must be in order" in message


def test_series_version_must_match_its_folder(sample: Sample) -> None:
    (sample.patchsets / "v0.1.0" / "series.yaml").write_text(
        "version: v0.1.1\nsummary: x\npatches:\n  - double_output\n")
    message = load_error(sample)
    assert message.startswith(f"{SERIES}:1:")
    assert "version 'v0.1.1' does not match its folder 'v0.1.0'" in message


def test_patch_folder_not_listed_in_series(sample: Sample) -> None:
    sample.write_patchsets({"v0.1.0/extra/patch.yaml": "id: extra\n"})
    message = load_error(sample)
    assert message.startswith(f"{SERIES}:3:")  # the `patches:` key
    assert "patch folder(s) extra exist but are not listed in the series" in message


def test_listed_patch_without_folder(sample: Sample) -> None:
    (sample.patchsets / "v0.1.0" / "series.yaml").write_text(
        "version: v0.1.0\nsummary: x\npatches:\n  - double_output\n  - ghost\n")
    message = load_error(sample)
    assert message.startswith(f"{SERIES}:3:")
    assert "listed patch 'ghost' has no folder patchsets/v0.1.0/ghost" in message


def test_patch_listed_twice(sample: Sample) -> None:
    (sample.patchsets / "v0.1.0" / "series.yaml").write_text(
        "version: v0.1.0\nsummary: x\npatches:\n  - double_output\n  - double_output\n")
    message = load_error(sample)
    assert "patch 'double_output' is listed twice" in message


def test_missing_series_yaml(sample: Sample) -> None:
    (sample.patchsets / "v0.1.0" / "series.yaml").unlink()
    message = load_error(sample)
    assert message.startswith(f"{SERIES}: missing")


def test_folder_not_a_version(sample: Sample) -> None:
    (sample.patchsets / "latest").mkdir()
    message = load_error(sample)
    assert "patchset folders must be named vX.Y.Z, got 'latest'" in message


def test_guard_must_read_a_flag_of_the_patch(sample: Sample) -> None:
    text = sample.edit_patch("guard: config.double_output", "guard: config.hidden_size > 0")
    message = load_error(sample)
    assert message.startswith(at(text, "guard: config.hidden_size"))
    assert "guard 'config.hidden_size > 0' reads none of this patch's flags (double_output)" in message


def test_guard_may_name_its_flag_as_a_string(sample: Sample) -> None:
    sample.edit_patch("guard: config.double_output", 'guard: getattr(config, "double_output", False)')
    (patch,) = load_patchsets(sample.patchsets).series()
    assert patch.edits[1].guard == 'getattr(config, "double_output", False)'


def test_guard_must_parse(sample: Sample) -> None:
    text = sample.edit_patch("guard: config.double_output", "guard: config.double_output and (")
    message = load_error(sample)
    assert message.startswith(at(text, "guard: config.double_output and ("))
    assert "guard is not a Python expression" in message


@pytest.mark.parametrize(
    ("flag_type", "default", "expected"),
    [
        ("bool", "0", "default 0 of flag 'double_output' is not of its declared type bool"),
        ("int", "false", "default False of flag 'double_output' is not of its declared type int"),
        ("int", "'3'", "default '3' of flag 'double_output' is not of its declared type int"),
        ("list[int]", "[1, x]", "default [1, 'x'] of flag 'double_output' is not a list[int]"),
        ("bool", "null", "default of flag 'double_output' is null; declare 'nullable: true'"),
    ],
    ids=["int-for-bool", "bool-for-int", "str-for-int", "list-item", "null"],
)
def test_invalid_default_type(sample: Sample, flag_type: str, default: str, expected: str) -> None:
    text = sample.edit_patch("    type: bool\n    default: false", f"    type: {flag_type}\n    default: {default}")
    message = load_error(sample)
    assert message.startswith(at(text, "    default:"))
    assert expected in message


def test_default_not_among_choices(sample: Sample) -> None:
    text = sample.edit_patch("    type: bool\n    default: false", "    type: str\n    default: c\n    choices: [a, b]")
    message = load_error(sample)
    assert message.startswith(at(text, "default: c"))
    assert "default 'c' is not one of its choices ['a', 'b']" in message


def test_add_config_field_flag_must_be_declared(sample: Sample) -> None:
    text = sample.edit_patch("    flag: double_output", "    flag: double_outptu")
    message = load_error(sample)
    assert message.startswith(at(text, "flag: double_outptu"))
    assert "flag 'double_outptu' is not declared by this patch" in message


def test_add_config_field_rejects_a_list_flag_with_a_list_default(sample: Sample) -> None:
    """A list-typed config field defaults to null (a dataclass field cannot default to a shared list):
    said at load time, not as a crash while applying."""
    text = sample.edit_patch("    type: bool\n    default: false", "    type: list[int]\n    default: [1]")
    message = load_error(sample)
    assert message.startswith(at(text, "    flag: double_output"))
    assert "add_config_field makes a list-typed flag a field that defaults to null; flag 'double_output' defaults to [1]" in message


# -- through the CLI ---------------------------------------------------------------------------


def test_cli_build_with_bad_patchset_exits_2(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    text = sample.edit_patch("summary: Multiply", "summry: Multiply")
    assert main(sample.args("build", "--out", str(sample.out))) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, f"{sample.patch_yaml.relative_to(sample.root)}:{line_of(text, 'summry')}:",
                   "unknown key 'summry'", "did you mean 'summary'?")
    assert captured.out == ""
    assert_untouched(sample.out)


def test_cli_check_with_malformed_yaml_exits_2(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    text = sample.edit_patch("  status: absent\n", "  status: absent\n   bad: indent\n")
    assert main(sample.args("check")) == 2
    one_error_line(capsys.readouterr().err, f"patchsets/v0.1.0/double_output/patch.yaml:{line_of(text, 'bad:')}:",
                   "malformed YAML")
    assert not sample.cache.exists()  # failed before resolving the upstream


def test_cli_check_list_flag_config_field_exits_2_not_a_crash(
    sample: Sample, capsys: pytest.CaptureFixture[str]
) -> None:
    """Used to crash in the operation (KeyError, traceback, exit 123) instead of a one-line exit 2."""
    sample.edit_patch("    type: bool\n    default: false", "    type: list[int]\n    default: [1]")
    sample.edit_patch("guard: config.double_output", "guard: config.double_output == [2]")
    assert main(sample.args("check")) == 2
    one_error_line(capsys.readouterr().err, "patch.yaml:", "flag 'double_output' defaults to [1]")


def test_cli_unknown_patchset_version_exits_2(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(sample.args("build", "--patchset", "v9.9.9", "--out", str(sample.out))) == 2
    one_error_line(capsys.readouterr().err, "unknown patchset version 'v9.9.9' (known: v0.1.0)")
    assert_untouched(sample.out)


def test_patch_yaml_that_is_not_utf8_names_the_byte(sample: Sample) -> None:
    path = sample.patchsets / "v0.1.0" / "double_output" / "patch.yaml"
    raw = path.read_bytes()
    offset = raw.index(b"summary:")
    path.write_bytes(raw[:offset] + b"\xff" + raw[offset + 1:])
    line = raw[:offset].count(b"\n") + 1
    message = load_error(sample)
    assert message == (f"{PATCH}:{line}: not UTF-8 text (byte offset {offset}: 0xff); "
                       "save the file as UTF-8")


def test_patch_yaml_alias_bomb_is_refused(sample: Sample) -> None:
    path = sample.patchsets / "v0.1.0" / "double_output" / "patch.yaml"
    bomb = ["x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    bomb += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path.write_text("\n".join(bomb) + "\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_error(sample).startswith(f"{PATCH}:1: refused: its aliases expand to more than 100000 values")


# -- the flag registry: Primus defaults, upstream values, runtime modules, planned flags ----------

# a v0.2.0 patch with a flag of its own whose template also reads v0.1.0's flag
READS_YAML = """\
id: triple_output
summary: Triple instead, when its flag is on.
implemented_in: core
upstream:
  status: absent
flags:
  - name: triple_output
    type: bool
    default: false
    version: v0.2.0
    table: model
    description: Triple.
edits:
  - op: insert_statements
    file: megatron/core/transformer/block.py
    target: shift
    where: start
    guard: config.triple_output
    code: |
      if self.config.double_output:
          y = y * 3
"""


def test_code_that_reads_another_patchs_flag_must_declare_it(sample: Sample) -> None:
    _second_version(sample, READS_YAML, "triple_output")
    message = load_error(sample)
    assert message == (f"{at(READS_YAML, 'code: |', 'patchsets/v0.2.0/triple_output/patch.yaml')} the code reads "
                       "flag(s) double_output of other patches; list them under uses_flags so the patch notes and "
                       "manifest name them")
    _second_version(sample, READS_YAML.replace("implemented_in: core\n", "implemented_in: core\nuses_flags: [double_output]\n"),
                    "triple_output")
    patch = load_patchsets(sample.patchsets).series()[-1]
    assert [f.name for f in patch.uses_flags] == ["double_output"]


def test_code_reading_a_flag_through_getattr_must_declare_it(sample: Sample) -> None:
    _second_version(sample, READS_YAML.replace("if self.config.double_output:",
                                               'if getattr(config, "double_output", False):'), "triple_output")
    assert "reads flag(s) double_output of other patches" in load_error(sample)


def test_primus_default_and_upstream_values(sample: Sample) -> None:
    sample.edit_patch("    default: false\n", "    default: false\n    primus_default: true\n    upstream_values: [false]\n")
    (flag,) = load_patchsets(sample.patchsets).registry()
    assert (flag.default, flag.config_default, flag.upstream_equivalent) == (False, True, (False,))


@pytest.mark.parametrize(
    ("extra", "needle", "expected"),
    [
        ("    primus_default: false\n", "primus_default", "primus_default equals default; declare it only where"),
        ("    primus_default: 2\n", "primus_default", "primus_default 2 of flag 'double_output' is not of its declared type bool"),
        ("    upstream_values: [yes_please]\n", "upstream_values",
         "upstream_values 'yes_please' of flag 'double_output' is not of its declared type bool"),
        ("    upstream_since: latest\n", "upstream_since", "upstream_since names a megatron-core release"),
        ("    runtime_module: primus_runtime.trainer.loop\n", "runtime_module",
         "runtime_module is for flags of runtime patches; megatron-core implements this one"),
    ],
)
def test_bad_registry_keys(sample: Sample, extra: str, needle: str, expected: str) -> None:
    text = sample.edit_patch("    default: false\n", "    default: false\n" + extra)
    message = load_error(sample)
    assert message.startswith(at(text, needle)), message
    assert expected in message


RUNTIME_YAML = """\
id: trainer_switch
summary: A trainer switch.
implemented_in: runtime
upstream:
  status: absent
flags:
  - name: trainer_switch
    type: bool
    default: false
    version: v0.2.0
    table: module
    description: Switch.
{module}"""


def test_runtime_flags_name_their_module(sample: Sample) -> None:
    _second_version(sample, RUNTIME_YAML.format(module=""), "trainer_switch")
    assert load_error(sample) == ("patchsets/v0.2.0/trainer_switch/patch.yaml:7: flag 'trainer_switch' of a runtime "
                                  "patch needs 'runtime_module', the primus_runtime module that implements it")
    _second_version(sample, RUNTIME_YAML.format(module="    runtime_module: trainer.loop\n"), "trainer_switch")
    assert "runtime_module names a module of primus_runtime" in load_error(sample)
    _second_version(sample, RUNTIME_YAML.format(module="    runtime_module: primus_runtime.trainer.loop\n"),
                    "trainer_switch")
    flag = load_patchsets(sample.patchsets).registry()[-1]
    assert (flag.scope, flag.runtime_module) == ("trainer", "primus_runtime.trainer.loop")


PLANNED = """\
planned_flags:
  - name: {name}
    type: int
    default: 4
    version: v0.1.0
    table: model
    implemented_in: core
    description: Not implemented yet.
"""


def test_planned_flags_join_the_registry(sample: Sample) -> None:
    series = sample.patchsets / "v0.1.0" / "series.yaml"
    series.write_text(series.read_text(encoding="utf-8") + PLANNED.format(name="later"), encoding="utf-8")
    patchsets = load_patchsets(sample.patchsets)
    assert [(f.name, f.implemented) for f in patchsets.registry()] == [("double_output", True), ("later", False)]
    assert [f.name for f in patchsets.flags()] == ["double_output"]  # what the wheel carries


def test_planned_flag_may_not_repeat_a_patch_flag(sample: Sample) -> None:
    series = sample.patchsets / "v0.1.0" / "series.yaml"
    text = series.read_text(encoding="utf-8") + PLANNED.format(name="double_output")
    series.write_text(text, encoding="utf-8")
    message = load_error(sample)
    assert message == (f"{at(text, '- name: double_output', SERIES)} planned flag 'double_output' is already "
                       "declared by patch 'double_output'")


RETIRED_WHEN = """  retired_when:
    file: megatron/core/transformer/config.py
    statement: "num_layers: int = 2"
"""


def test_retired_when_is_loaded(sample: Sample) -> None:
    sample.edit_patch("  note: upstream has nothing like it.\n", "  note: upstream has nothing like it.\n" + RETIRED_WHEN)
    (patch,) = load_patchsets(sample.patchsets).series()
    assert patch.retired_when == ("megatron/core/transformer/config.py", "num_layers: int = 2")


@pytest.mark.parametrize(("statement", "expected"), [
    ('"if x:"', "retired_when statement is not valid Python"),
    ('"if x: pass"', "retired_when names one simple statement"),
    ('"a = 1; b = 2"', "retired_when names one simple statement"),
])
def test_retired_when_needs_one_simple_statement(sample: Sample, statement: str, expected: str) -> None:
    text = sample.edit_patch("  note: upstream has nothing like it.\n", "  note: upstream has nothing like it.\n"
                             + RETIRED_WHEN.replace('"num_layers: int = 2"', statement))
    message = load_error(sample)
    assert message.startswith(at(text, "statement:")) and expected in message


def test_retired_when_file_stays_in_the_tree(sample: Sample) -> None:
    sample.edit_patch("  note: upstream has nothing like it.\n", "  note: upstream has nothing like it.\n"
                      + RETIRED_WHEN.replace("megatron/core/transformer/config.py", "../outside.py"))
    assert "leaves" in load_error(sample) or "outside" in load_error(sample)

