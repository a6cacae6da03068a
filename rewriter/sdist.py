"""Fetch a release's sdist from the package index without building anything, verified by the pin.

``pip download --no-binary :all:`` asks the build backend for the sdist's metadata, which runs
megatron-core's ``setup.py`` (and fails with pip >= 26). The sdist is only a file: this module
reads the index's project page (the simple API, JSON per PEP 691 or HTML per PEP 503, so any
``PIP_INDEX_URL`` mirror works), picks the release's ``.tar.gz``, downloads it, checks the sha256
the pin records, and moves it into the cache atomically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from rewriter.cache import atomic_write_bytes
from rewriter.errors import UpstreamError

DEFAULT_INDEX = "https://pypi.org/simple/"
ACCEPT_PAGE = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
TIMEOUT_S = 120


def http_get(url: str, accept: str) -> tuple[bytes, str, str]:
    """GET ``url``: (body, content type, final URL). Credentials in the URL become basic auth."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Accept": accept, "User-Agent": "primus-rewriter"}
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as resp:
        return resp.read(), resp.headers.get("Content-Type", ""), resp.geturl()


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _public(url: str) -> str:
    """``url`` without credentials, for messages."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname or "")) if parts.username else url


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def project_files(page: bytes, content_type: str, base: str) -> dict[str, tuple[str, str | None]]:
    """filename -> (absolute URL, sha256 the index states or None), from a simple-API project page."""
    files: dict[str, tuple[str, str | None]] = {}
    if "json" in content_type:
        for entry in json.loads(page).get("files", []):
            url = urllib.parse.urljoin(base, entry["url"])
            files[entry["filename"]] = (url, (entry.get("hashes") or {}).get("sha256"))
        return files
    parser = _Anchors()
    parser.feed(page.decode("utf-8", errors="replace"))
    for href in parser.hrefs:
        url, _, fragment = urllib.parse.urljoin(base, href).partition("#")
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
        files[name] = (url, digest)
    return files


def fetch_sdist(package: str, version: str, sha256: str | None, target: Path,
                log: Callable[[str], None] = lambda _m: None,
                get: Callable[[str, str], tuple[bytes, str, str]] | None = None) -> Path:
    """Download ``package==version``'s sdist to ``target``, verified against ``sha256``.

    ``sha256=None`` is for a release not yet in the pin (``releases add``): the download is then
    checked against the sha256 the index states, where it states one.
    """
    get = get or http_get
    index = index_url()
    page_url = index.rstrip("/") + "/" + _normalize(package) + "/"
    where = _public(page_url)
    try:
        page, content_type, final = get(page_url, ACCEPT_PAGE)
        files = project_files(page, content_type, final)
        wanted = {f"{stem}-{version}.tar.gz" for stem in (package, package.replace("-", "_"), _normalize(package))}
        name = next((n for n in sorted(files) if n in wanted or n.lower() in wanted), None)
        if name is None:
            raise UpstreamError(
                f"{where} lists no sdist of {package}=={version} ({len(files)} files); "
                "check PIP_INDEX_URL, or pass --sdist PATH"
            )
        url, stated = files[name]
        expected = sha256 or stated
        log(f"downloading {name} from {_public(url)}")
        data, _, _ = get(url, "application/octet-stream, */*")
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UpstreamError(
            f"cannot download {package}=={version} from {where}: {reason}; check the network or PIP_INDEX_URL, "
            "or pass --sdist PATH"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None and actual != expected:
        who = "the pin file expects" if sha256 else "the index states"
        raise UpstreamError(
            f"digest mismatch: the sdist downloaded from {_public(url)} has sha256 {actual}, {who} "
            f"{expected} for {package}=={version}"
        )
    atomic_write_bytes(target, data)
    return target
