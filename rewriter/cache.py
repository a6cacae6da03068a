"""The build cache: one key function, atomic writes, and reads verified against a recorded hash.

A cache entry is only ever trusted if it is exactly what was written. A full disk, a kill -9 or a
stray edit can leave a truncated or altered file; reusing it would publish a broken wheel with
exit 0. So:

* every write goes to a temporary name in the entry's own folder and is moved into place with
  ``os.replace`` (a reader sees the old state or the whole new one, never half of it);
* every entry records the sha256 of its content at write time (inside the JSON entry, or in an
  ``entry.json`` sidecar beside a cached file), and every read checks it;
* a damaged entry is reported with one warning line, discarded, and the caller rebuilds it.

:func:`cache_key` is the one way to key an entry: it always covers the rewriter's own source and
the versions of the tools that shape the output, so no kind of entry can forget one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from rewriter import __version__
from rewriter.stale import clean_stale

#: bump to invalidate every cache entry written by an older layout
CACHE_FORMAT = "2"
SIDECAR = "entry.json"
Warn = Callable[[str], None]


@lru_cache(maxsize=1)
def rewriter_code_digest() -> str:
    """Digest of the rewriter's own source: a cache written by other code is never reused."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions that change what a build writes; recorded in the manifest and in every cache key.

    The rewriter's own (libcst, jinja2), and the wheel build's (upstream's backend is run from
    this environment without isolation, so setuptools, wheel and pybind11 shape the wheel's
    metadata and the compiled helper).
    """
    versions = {"rewriter": __version__}
    for name in ("libcst", "jinja2", "setuptools", "wheel", "pybind11"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def cache_key(kind: str, *parts: str | bytes) -> str:
    """The key of a ``kind`` entry whose content is decided by ``parts`` (and by the tools).

    Each part is length-prefixed, so no two different part lists give the same byte stream.
    """
    h = hashlib.sha256()
    head = [CACHE_FORMAT, kind, rewriter_code_digest(), json.dumps(tool_versions(), sort_keys=True)]
    for part in (*head, *parts):
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def discard(path: Path) -> None:
    """Remove a file or folder so that no reader sees it half-deleted: rename it away first."""
    if not path.exists() and not path.is_symlink():
        return
    trash = path.with_name(f".trash-{os.getpid()}-{path.name}")
    try:
        path.replace(trash)
    except OSError:
        trash = path
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def clean_leftovers(root: Path | None, log: Callable[[str], None] = lambda _m: None) -> None:
    """Remove the temporary and half-discarded names that killed builds left in a cache."""
    if root is None or not root.is_dir():
        return
    names = (".tmp-", ".trash-")
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.name.startswith(names))]:
        clean_stale(folder, names, log)


class JsonCache:
    """Verified JSON values by key (the engine's and the flavor's rewritten files); ``None``: off.

    An entry is ``{"sha256": <hash of the canonical value>, "value": <value>}`` in one file.
    """

    def __init__(self, root: Path | None, warn: Warn = lambda _m: None) -> None:
        self.root = root
        self.warn = warn

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        """The value stored under ``key``, or ``None`` (missing, or damaged and now discarded)."""
        if self.root is None:
            return None
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.damaged(path, f"cannot be read: {exc.strerror}")
            return None
        try:
            entry = json.loads(raw)
            value = entry["value"]
            ok = entry["sha256"] == _json_digest(value)
        except (ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            self.damaged(path, "does not match the hash recorded when it was written")
            return None
        return value

    def put(self, key: str, value: Any) -> None:
        if self.root is None:
            return
        entry = {"sha256": _json_digest(value), "value": value}
        try:
            atomic_write_bytes(self._path(key), json.dumps(entry).encode("utf-8"))
        except OSError as exc:  # a cache that cannot be written only costs time
            self.warn(f"warning: cannot write build cache entry {self._path(key)}: {exc.strerror}; continuing without it")

    def damaged(self, path: Path, why: str) -> None:
        """Report and discard a damaged entry (also for a value the caller cannot use)."""
        self.warn(f"warning: build cache entry {path} {why}; discarding it and rebuilding")
        discard(path)

    def path_of(self, key: str) -> Path:
        return self._path(key)


def _json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


class FileCache:
    """Verified files by key (wheels, the compiled helper); ``None``: off.

    An entry is a folder ``<root>/<key>/`` holding the file and ``entry.json`` (its name, size and
    sha256). The folder is assembled under a temporary name and renamed into place, so it is
    complete or absent; when two builds race, the first rename wins and the other is dropped.
    """

    def __init__(self, root: Path | None, warn: Warn = lambda _m: None) -> None:
        self.root = root
        self.warn = warn

    def get(self, key: str) -> Path | None:
        """The verified cached file for ``key``, or ``None`` (missing, or damaged and discarded)."""
        if self.root is None:
            return None
        entry = self.root / key
        if not entry.exists():
            return None
        try:
            meta = json.loads((entry / SIDECAR).read_text(encoding="utf-8"))
            path = entry / meta["name"]
            if Path(meta["name"]).name != meta["name"]:
                raise ValueError("bad name")
            ok = path.stat().st_size == meta["size"] and sha256_file(path) == meta["sha256"]
            why = "does not match the hash recorded when it was written"
        except (OSError, ValueError, TypeError, KeyError) as exc:
            ok, why = False, f"is incomplete or unreadable ({exc.__class__.__name__})"
        if not ok:
            self.warn(f"warning: build cache entry {entry} {why}; discarding it and rebuilding")
            discard(entry)
            return None
        return path

    def put(self, key: str, src: Path) -> None:
        """Store a copy of ``src`` under ``key`` (no-op if a good entry is already there)."""
        if self.root is None:
            return
        entry = self.root / key
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.root))
        except OSError as exc:
            self.warn(f"warning: cannot write build cache entry {entry}: {exc.strerror}; continuing without it")
            return
        try:
            shutil.copyfile(src, tmp / src.name)
            with (tmp / src.name).open("rb") as fh:
                os.fsync(fh.fileno())
            meta = {"name": src.name, "size": (tmp / src.name).stat().st_size, "sha256": sha256_file(tmp / src.name)}
            atomic_write_bytes(tmp / SIDECAR, json.dumps(meta, indent=1).encode("utf-8"))
            tmp.chmod(0o755)
            try:
                tmp.replace(entry)
            except OSError:
                if not entry.exists():
                    raise
                # another build stored it first; it is verified on read like any entry
        except OSError as exc:
            self.warn(f"warning: cannot write build cache entry {entry}: {exc.strerror}; continuing without it")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
