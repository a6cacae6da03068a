"""One line, not a traceback, for the smaller faults of issue 11 item 9 (runtime side): ``dump -o``
that cannot be written, ``params`` without megatron-core, a damaged wheel manifest, and the
staging folders a killed ``preprocess`` leaves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from primus_runtime import cli
from primus_runtime.data.preprocess import remove_stale_partials
from tests.runtime.conftest import REPO

EXAMPLE = REPO / "configs" / "examples" / "tiny_llama-cpu.yaml"


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize("where", ["under-a-file", "missing-folder", "a-folder"])
def test_dump_into_an_unwritable_place_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   where: str) -> None:
    (tmp_path / "file").write_text("x")
    target = {"under-a-file": tmp_path / "file" / "out.yaml", "missing-folder": tmp_path / "no" / "out.yaml",
              "a-folder": tmp_path}[where]
    assert cli.main(["dump", "--exp", str(EXAMPLE), "-o", str(target)]) == 1
    assert _one_line(capsys).startswith(f"error: -o {target}: cannot write: ")


def test_params_without_megatron_core_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("megatron") else real(name, *a))
    assert cli.main(["params", "llama3_8B"]) == 1
    line = _one_line(capsys)
    assert "megatron-core is not importable" in line and "pip install" in line


def _fake_megatron(root: Path, manifest: bytes) -> Path:
    package = root / "megatron" / "core"
    (package / "_primus").mkdir(parents=True)
    for folder in (root / "megatron", package):
        (folder / "__init__.py").write_text("")
    (package / "_primus" / "manifest.json").write_bytes(manifest)
    return package / "_primus" / "manifest.json"


@pytest.mark.parametrize(("content", "words"), [
    (b'{"package": {"version": "0.16.1"', "unreadable (JSONDecodeError"),
    (b"\xff\xfe not text", "unreadable (UnicodeDecodeError"),
    (json.dumps({"package": {"version": "0.16.1"}, "flags": []}).encode(), "no patchset.version (a string, or null"),
    (json.dumps({"package": {"version": "0.16.1"}, "patchset": {"version": 4}, "flags": []}).encode(),
     "no patchset.version (a string, or null"),
    (json.dumps([1, 2]).encode(), "expected a JSON object, found list"),
], ids=["truncated", "binary", "missing-key", "wrong-type", "not-an-object"])
def test_damaged_manifest_is_one_line_naming_it(tmp_path: Path, content: bytes, words: str) -> None:
    manifest = _fake_megatron(tmp_path, content)
    proc = subprocess.run([sys.executable, "-m", "primus_runtime", "check", "--exp", str(EXAMPLE)],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {manifest}: ") and words in proc.stderr and "reinstall" in proc.stderr


def test_an_unpatched_builds_manifest_reads_as_upstream(tmp_path: Path) -> None:
    """The cpu-test flavor of unpatched upstream carries a manifest whose patchset version is null."""
    from primus_runtime.wheel_info import read_manifest

    manifest = _fake_megatron(tmp_path, json.dumps({"package": {"version": "0.16.1+primus.upstream.cputest"},
                                                    "patchset": {"version": None, "versions": []},
                                                    "flags": []}).encode())
    assert read_manifest(manifest)["patchset"]["version"] is None


def test_stale_preprocess_staging_folders_are_removed(tmp_path: Path) -> None:
    """A killed run's ``.partial-<host>-<pid>-*`` folder goes; a live run's, and another host's recent one, stay."""
    name = "corpus_text_document"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    killed = tmp_path / f".{name}.partial-{host}-{dead.pid}-abc_12"
    live = tmp_path / f".{name}.partial-{host}-{os.getpid()}-def_34"
    foreign = tmp_path / f".{name}.partial-elsewhere-1-ghi_56"
    old_foreign = tmp_path / f".{name}.partial-elsewhere-2-jkl_78"
    other_dataset = tmp_path / f".other_text_document.partial-{host}-{dead.pid}-mno_90"
    for folder in (killed, live, foreign, old_foreign, other_dataset):
        folder.mkdir()
        (folder / "corpus_text_document.bin").write_bytes(b"\0" * 64)
    os.utime(old_foreign, (0, 0))
    assert sorted(remove_stale_partials(tmp_path, name)) == sorted([killed, old_foreign])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, foreign, other_dataset))
