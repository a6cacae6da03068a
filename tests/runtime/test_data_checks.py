"""Training data checked before megatron reads it (issue 11 item 6), in process: no megatron needed.

The index files here are written from Megatron's documented ``.idx`` layout (magic, version,
dtype code, counts, int32 sizes, int64 byte pointers, int64 document boundaries); the slow
trainer tests (test_runtime_fault_injection.py) run the same checks on files preprocess wrote.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from primus_runtime.data.indexed_check import HEADER, check_prefix, npy_problem, prefixes, repair_index_cache
from primus_runtime.errors import ConfigError, DataError


def write_dataset(prefix: Path, documents: list[list[int]], dtype_code: int = 8, itemsize: int = 2) -> None:
    """A one-sequence-per-document indexed dataset, uint16 tokens by default."""
    sizes = [len(d) for d in documents]
    pointers = np.cumsum([0, *sizes[:-1]]) * itemsize
    with open(f"{prefix}.idx", "wb") as fh:
        fh.write(HEADER + struct.pack("<QBQQ", 1, dtype_code, len(sizes), len(sizes) + 1))
        fh.write(np.asarray(sizes, dtype="<i4").tobytes() + np.asarray(pointers, dtype="<i8").tobytes())
        fh.write(np.arange(len(sizes) + 1, dtype="<i8").tobytes())
    Path(f"{prefix}.bin").write_bytes(np.concatenate([np.asarray(d, dtype="<u2") for d in documents]).tobytes())


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    prefix = tmp_path / "corpus_text_document"
    write_dataset(prefix, [[1, 2, 3], [4, 5], [6, 7, 8, 9]])
    return prefix


def _error(prefix: Path) -> str:
    with pytest.raises(DataError) as info:
        check_prefix(str(prefix), "data_path")
    assert info.value.exit_code == 4
    return str(info.value)


def test_a_good_dataset_passes(dataset: Path) -> None:
    check_prefix(str(dataset), "data_path")


def test_missing_prefix_names_it(tmp_path: Path) -> None:
    message = _error(tmp_path / "nothing_here")
    assert message.startswith("data_path: no dataset at ") and "nothing_here" in message and "preprocess" in message


def test_missing_bin_names_it(dataset: Path) -> None:
    Path(f"{dataset}.bin").unlink()
    assert _error(dataset).startswith(f"{dataset}.bin: missing")


@pytest.mark.parametrize(("size", "words"), [(0, "empty file"), (5, "truncated"), (20, "truncated"),
                                             (60, "truncated: 3 sequences and 4 documents need")])
def test_truncated_index_names_the_file(dataset: Path, size: int, words: str) -> None:
    idx = Path(f"{dataset}.idx")
    idx.write_bytes(idx.read_bytes()[:size])
    message = _error(dataset)
    assert message.startswith(f"{idx}: ") and words in message


def test_bad_header_magic(dataset: Path) -> None:
    idx = Path(f"{dataset}.idx")
    idx.write_bytes(b"NOTANIDX\x00" + idx.read_bytes()[9:])
    assert "not a Megatron index" in _error(dataset)


def test_bad_version_and_dtype(dataset: Path) -> None:
    idx = Path(f"{dataset}.idx")
    raw = bytearray(idx.read_bytes())
    raw[9:17] = struct.pack("<Q", 2)
    idx.write_bytes(bytes(raw))
    assert "index version 2" in _error(dataset)
    raw[9:17] = struct.pack("<Q", 1)
    raw[17] = 42
    idx.write_bytes(bytes(raw))
    assert "unknown token dtype code 42" in _error(dataset)


def test_truncated_bin_against_the_index(dataset: Path) -> None:
    binary = Path(f"{dataset}.bin")
    binary.write_bytes(binary.read_bytes()[:-3])
    message = _error(dataset)
    assert message == f"{binary}: truncated: {dataset.name}.idx places tokens up to byte 18, the file has 15"


def test_empty_dataset(tmp_path: Path) -> None:
    prefix = tmp_path / "empty"
    Path(f"{prefix}.idx").write_bytes(HEADER + struct.pack("<QBQQ", 1, 8, 0, 1) + struct.pack("<q", 0))
    Path(f"{prefix}.bin").write_bytes(b"")
    assert "holds no documents" in _error(prefix)


def test_prefixes_of_blends() -> None:
    assert prefixes("data_path", "a b c") == ["a", "b", "c"]
    assert prefixes("data_path", ["0.3", "a", "0.7", "b"]) == ["a", "b"]
    assert prefixes("data_path", None) == []
    with pytest.raises(ConfigError, match="data_path: .* 'a' is not a weight"):
        prefixes("data_path", "a b")


def _cache_group(folder: Path, base: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{base}-description.txt").write_text("{}")
    paths = []
    for affix, n in (("document_index", 7), ("sample_index", 5), ("shuffle_index", 4)):
        path = folder / f"{base}-{affix}.npy"
        np.save(path, np.arange(n * 100, dtype=np.int64), allow_pickle=True)
        paths.append(path)
    return paths


def test_repair_index_cache_removes_a_truncated_group_only(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = _cache_group(cache, "aaaa-GPTDataset-valid")
    bad = _cache_group(cache, "bbbb-GPTDataset-train")
    assert all(npy_problem(p) is None for p in good + bad)
    bad[2].write_bytes(bad[2].read_bytes()[:300])
    warnings = repair_index_cache([cache, tmp_path / "absent"])
    assert len(warnings) == 1 and "bbbb-GPTDataset-train-" in warnings[0] and "shuffle_index.npy: truncated" in warnings[0]
    assert not any(p.exists() for p in bad) and not (cache / "bbbb-GPTDataset-train-description.txt").exists()
    assert all(p.exists() for p in good) and (cache / "aaaa-GPTDataset-valid-description.txt").exists()
    assert repair_index_cache([cache]) == []


def test_npy_problem_on_an_empty_or_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "a.npy").write_bytes(b"")
    (tmp_path / "b.npy").write_bytes(b"hello world, not numpy")
    assert "unreadable header" in npy_problem(tmp_path / "a.npy")
    assert "unreadable header" in npy_problem(tmp_path / "b.npy")
