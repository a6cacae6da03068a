"""Check training data before megatron reads it, and repair the dataset index cache.

megatron.core reads a dataset prefix's ``.idx`` with asserts and memory maps, and its ``.bin``
only when a sample is drawn: a truncated or foreign file ends in an assertion, a numpy error or
a bus error, far from the file at fault. :func:`check_prefix` reads what the ``.idx`` header
promises (Megatron's layout: magic, version, token dtype, sequence and document counts, then
int32 sizes, int64 byte pointers, int64 document boundaries) and checks that both files are
long enough to hold it, reading only the header and the last entries, so it costs the same for
any corpus size.

GPTDataset (and BlendedDataset) cache their document/sample/shuffle orders as ``.npy`` files
named ``<hash>-<class>-<split>-*.npy`` beside a ``<hash>-<class>-<split>-description.txt``, and
take the cache as good when the files exist. A run killed while writing them (or a full disk)
leaves a truncated file that fails every later run. :func:`repair_index_cache` checks each
``.npy`` against the size its header promises and removes a damaged group, which megatron then
builds again.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from primus_runtime.errors import ConfigError, DataError

HEADER = b"MMIDIDX\x00\x00"
_FIXED = struct.Struct("<QBQQ")  # version, dtype code, sequence count, document count
HEAD_LEN = len(HEADER) + _FIXED.size
#: megatron's token dtype codes and their item sizes
ITEM_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}
PREPROCESS_HINT = "make one with python -m primus_runtime preprocess"


def prefixes(key: str, value: object) -> list[str]:
    """The dataset prefixes of a ``data_path``-style value: ``prefix ...`` or ``weight prefix weight prefix ...``."""
    if value is None:
        return []
    items = [str(v) for v in value] if isinstance(value, list) else str(value).split()
    if len(items) % 2 == 1:
        return items
    for weight in items[0::2]:
        try:
            float(weight)
        except ValueError:
            raise ConfigError(f"{key}: {' '.join(items)!r} has an even number of entries, so it is read as weight, "
                              f"prefix pairs, and {weight!r} is not a weight") from None
    return items[1::2]


def check_prefix(prefix: str, key: str) -> None:
    """Raise :class:`DataError` naming the file and the problem when ``prefix`` is not a readable dataset."""
    idx, bin_ = Path(prefix + ".idx"), Path(prefix + ".bin")
    if not idx.exists() and not bin_.exists():
        raise DataError(f"{key}: no dataset at {prefix} (neither {idx.name} nor {bin_.name} exists; the prefix is "
                        f"the path without .bin/.idx; {PREPROCESS_HINT})")
    for path in (idx, bin_):
        if not path.is_file():
            raise DataError(f"{path}: missing ({key} names the dataset {prefix}, which needs both .idx and .bin)")
    size = idx.stat().st_size
    with open(idx, "rb") as fh:
        head = fh.read(HEAD_LEN)
        if not head:
            raise DataError(f"{idx}: empty file, not a Megatron index ({PREPROCESS_HINT})")
        if head[:len(HEADER)] != HEADER and not HEADER.startswith(head):
            raise DataError(f"{idx}: not a Megatron index (header {head[:len(HEADER)]!r}, expected {HEADER!r})")
        if len(head) < HEAD_LEN:
            raise DataError(f"{idx}: truncated: {size} bytes, shorter than the {HEAD_LEN}-byte header")
        version, code, sequences, documents = _FIXED.unpack(head[len(HEADER):])
        if version != 1:
            raise DataError(f"{idx}: index version {version}, only version 1 can be read")
        if code not in ITEM_SIZES:
            raise DataError(f"{idx}: unknown token dtype code {code} (known: {sorted(ITEM_SIZES)})")
        needed = HEAD_LEN + sequences * (4 + 8) + documents * 8
        if size < needed:
            raise DataError(f"{idx}: truncated: {sequences} sequences and {documents} documents need {needed} "
                            f"bytes, the file has {size}")
        if sequences == 0 or documents < 2:
            raise DataError(f"{idx}: holds no documents: nothing to train on")
        last_length = _read(fh, HEAD_LEN + (sequences - 1) * 4, "<i")
        last_pointer = _read(fh, HEAD_LEN + sequences * 4 + (sequences - 1) * 8, "<q")
        last_boundary = _read(fh, HEAD_LEN + sequences * 12 + (documents - 1) * 8, "<q")
    if last_boundary != sequences:
        raise DataError(f"{idx}: inconsistent: the document boundaries end at sequence {last_boundary}, the index "
                        f"holds {sequences}")
    bin_needed = last_pointer + last_length * ITEM_SIZES[code]
    bin_size = bin_.stat().st_size
    if bin_size < bin_needed:
        raise DataError(f"{bin_}: truncated: {idx.name} places tokens up to byte {bin_needed}, the file has "
                        f"{bin_size}")


def _read(fh: BinaryIO, offset: int, fmt: str) -> int:
    fh.seek(offset)
    return int(struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0])


def npy_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete ``.npy`` file (None when it is): its header gives shape and dtype."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(fh)
            data_start = fh.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        return f"unreadable header ({type(exc).__name__}: {exc})"
    if dtype.hasobject:
        return None
    needed = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size
    return None if have >= needed else f"truncated: {have} bytes, its header promises {needed}"


def repair_index_cache(folders: Iterable[Path]) -> list[str]:
    """Remove every cached index group with a damaged ``.npy`` file; return one warning per group removed."""
    warnings = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for description in sorted(folder.glob("*-description.txt")):
            base = description.name[: -len("description.txt")]
            group = sorted(folder.glob(f"{base}*.npy"))
            problems = [f"{p.name}: {problem}" for p in group if (problem := npy_problem(p)) is not None]
            if not problems:
                continue
            for path in (description, *group):  # the description first: no half-removed group looks complete
                path.unlink(missing_ok=True)
            warnings.append(f"dataset index cache {folder}: removed the damaged {base}* files ({'; '.join(problems)}); "
                            f"they are built again")
    return warnings
