"""Patch paths stay inside the tree they edit: refused at load time with file:line, nothing written.

An ``add_module`` with ``file: ../../../x.py`` once wrote outside the staging tree with exit 0,
and ``insert_statements`` on an absolute path rewrote that file in place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_upstream import Sample, assert_untouched, line_of, one_error_line

from rewriter.cli import main

PATCH = "patchsets/v0.1.0/double_output/patch.yaml"


def add_module_edit(sample: Sample, file: str) -> str:
    return sample.edit_patch("edits:\n", f"edits:\n  - op: add_module\n    file: {file}\n    code: \"X = 1\\n\"\n\n")


@pytest.mark.parametrize("command", ["check", "build"])
def test_add_module_escaping_the_tree_is_refused(sample: Sample, tmp_path: Path, command: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    text = add_module_edit(sample, "../../../x.py")
    extra = ["--out", str(sample.out)] if command == "build" else []
    assert main(sample.args(command, *extra)) == 2
    one_error_line(capsys.readouterr().err, f"{PATCH}:{line_of(text, 'file: ../../../x.py')}:", "'..'")
    assert not list(tmp_path.rglob("x.py"))
    assert_untouched(sample.out)


def test_absolute_path_on_insert_statements_is_refused(sample: Sample, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim.py"
    victim.write_text("def scale(config, x):\n    y = x\n    return y\n")
    text = sample.edit_patch("file: megatron/core/transformer/block.py", f"file: {victim}")
    assert main(sample.args("build", "--out", str(sample.out))) == 2
    one_error_line(capsys.readouterr().err, f"{PATCH}:{line_of(text, f'file: {victim}')}:", "relative path")
    assert victim.read_text() == "def scale(config, x):\n    y = x\n    return y\n"
    assert_untouched(sample.out)


def test_template_outside_the_patch_folder_is_refused(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    text = sample.edit_patch("template: double.py.j2", "template: ../double.py.j2")
    assert main(sample.args("check")) == 2
    one_error_line(capsys.readouterr().err, f"{PATCH}:{line_of(text, 'template: ../double.py.j2')}:", "template")


def test_import_module_source_must_be_relative(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    text = sample.edit_patch("edits:\n", "edits:\n  - op: import_module\n    file: megatron/core/old.py\n"
                             "    from_release: \"0.1.0\"\n    source: /etc/passwd.py\n\n")
    assert main(sample.args("check")) == 2
    one_error_line(capsys.readouterr().err, f"{PATCH}:{line_of(text, 'source: /etc/passwd.py')}:", "source")


def test_a_dotted_name_inside_the_tree_is_accepted(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    add_module_edit(sample, "megatron/core/..hidden/x..py")
    assert main(sample.args("check")) == 0
