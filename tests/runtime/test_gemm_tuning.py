"""PRIMUS_HIPBLASLT_TUNING_STAGE through TunableOp: stage parsing, file layout, and DISPATCH tests.

CI has no GPU, so TunableOp never runs here: the GPU branches are dispatch tests that replace
``torch.cuda.tunable``'s functions with recorders and check which are called, in which order,
with which files. What tuning gains on a GPU is measured by benchmarks/bench_turbo.py (docs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from primus_runtime.errors import ConfigError
from primus_runtime.trainer import gemm_tuning

FUNCTIONS = ("enable", "tuning_enable", "record_untuned_enable", "set_filename", "read_file", "tune_gemm_in_file")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """A GPU host as far as gemm_tuning can tell, with every TunableOp call recorded instead of made."""
    recorded: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name in FUNCTIONS:
        monkeypatch.setattr(torch.cuda.tunable, name, lambda *a, _n=name: recorded.append((_n, *a)) or True)
    monkeypatch.setattr(torch.cuda.tunable, "get_results", lambda: [("GemmTunableOp", "NN_8_8_8", "Gemm_Blas_1", 0.1)])
    monkeypatch.setenv("PYTORCH_TUNABLEOP_UNTUNED_FILENAME", "restored-after-the-test")
    return recorded


def test_stage_and_paths_follow_primus(tmp_path: Path) -> None:
    assert gemm_tuning.from_environment({}, tmp_path, "llama3.2_1B", 0).stage == 0
    tuning = gemm_tuning.from_environment({"PRIMUS_HIPBLASLT_TUNING_STAGE": "2"}, tmp_path, "llama3.2_1B", 3, 1)
    assert tuning.stage == 2 and not tuning.trains
    assert tuning.untuned == tmp_path / "tune_hipblaslt" / "llama3.2_1B" / "gemm_shape" / "untuned3-gpu1.csv"
    assert tuning.tuned == tmp_path / "tune_hipblaslt" / "llama3.2_1B" / "gemm_tune" / "tuned3.csv"
    with pytest.raises(ConfigError, match=r"PRIMUS_HIPBLASLT_TUNING_STAGE='4': choose 0 \(off\)"):
        gemm_tuning.from_environment({"PRIMUS_HIPBLASLT_TUNING_STAGE": "4"}, tmp_path, "m", 0)


def test_without_a_gpu_every_stage_is_reported_and_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for stage in ("1", "3"):
        tuning = gemm_tuning.from_environment({"PRIMUS_HIPBLASLT_TUNING_STAGE": stage}, tmp_path, "m", 0)
        assert gemm_tuning.start(tuning).endswith("no GPU on this host, TunableOp has nothing to tune; ignored")
    assert gemm_tuning.start(gemm_tuning.from_environment({}, tmp_path, "m", 0)) is None


def test_stage_1_records_shapes_without_tuning(tmp_path: Path, calls: list[tuple]) -> None:
    import os

    tuning = gemm_tuning.from_environment({"PRIMUS_HIPBLASLT_TUNING_STAGE": "1"}, tmp_path, "m", 1)
    assert "recording GEMM shapes" in gemm_tuning.start(tuning)
    assert calls == [("enable", True), ("tuning_enable", False), ("record_untuned_enable", True)]
    template = os.environ["PYTORCH_TUNABLEOP_UNTUNED_FILENAME"]
    assert template.endswith("untuned1-gpu.csv") and tuning.untuned.parent.is_dir()
    # TunableOp inserts the current device's ordinal before the suffix (seen on an H200, torch 2.11):
    # the file it writes is the one stage 2 reads
    assert template[: -len(".csv")] + str(tuning.device) + ".csv" == str(tuning.untuned)


def test_stage_2_tunes_what_stage_1_recorded(tmp_path: Path, calls: list[tuple]) -> None:
    tuning = gemm_tuning.from_environment({"PRIMUS_HIPBLASLT_TUNING_STAGE": "2"}, tmp_path, "m", 0)
    with pytest.raises(ConfigError, match="untuned0-gpu0.csv does not exist; run stage 1"):
        gemm_tuning.tune(tuning)
    tuning.untuned.parent.mkdir(parents=True)
    tuning.untuned.write_text("Validator,PT_VERSION,2.13.0\n")
    assert gemm_tuning.tune(tuning).endswith(f"1 GEMM choices, written to {tuning.tuned} at exit")
    assert calls == [("enable", True), ("tuning_enable", True), ("record_untuned_enable", False),
                     ("set_filename", str(tuning.tuned)), ("tune_gemm_in_file", str(tuning.untuned))]


def test_stage_3_needs_the_tuned_file_and_reads_it(tmp_path: Path, calls: list[tuple]) -> None:
    tuning = gemm_tuning.from_environment({"PRIMUS_HIPBLASLT_TUNING_STAGE": "3"}, tmp_path, "m", 0)
    with pytest.raises(ConfigError, match="tuned0.csv does not exist; run stage 1 .* and stage 2"):
        gemm_tuning.start(tuning)
    assert calls == []
    tuning.tuned.parent.mkdir(parents=True)
    tuning.tuned.write_text("Validator,PT_VERSION,2.13.0\n")
    assert gemm_tuning.start(tuning).endswith(f"GEMM choices from {tuning.tuned}")
    assert calls[-1] == ("read_file", str(tuning.tuned)) and ("tuning_enable", False) in calls


def test_the_run_trains_except_in_stage_2(tmp_path: Path, calls: list[tuple], monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """What ``run()`` asks before anything else: stage 2 tunes (files under the workspace, per model)
    and trains nothing; stage 0 trains untouched."""
    import logging
    from types import SimpleNamespace

    exp = SimpleNamespace(workspace=str(tmp_path), model_config=tmp_path / "models" / "llama3.2_1B.yaml")
    log = logging.getLogger("test_gemm_tuning")
    monkeypatch.delenv("PRIMUS_HIPBLASLT_TUNING_STAGE", raising=False)
    assert gemm_tuning.prepare(exp, 0, log) and calls == []
    monkeypatch.setenv("PRIMUS_HIPBLASLT_TUNING_STAGE", "2")
    recorded = tmp_path / "tune_hipblaslt" / "llama3.2_1B" / "gemm_shape" / "untuned1-gpu0.csv"
    recorded.parent.mkdir(parents=True)
    recorded.write_text("Validator,PT_VERSION,2.13.0\n")
    with caplog.at_level(logging.INFO, logger="test_gemm_tuning"):
        assert not gemm_tuning.prepare(exp, 1, log)
    assert ("tune_gemm_in_file", str(recorded)) in calls
    assert "tune GEMM kernels" in caplog.text
