"""Tokenize a JSONL corpus into Megatron's indexed dataset format (``.bin`` + ``.idx``).

``python -m primus_runtime preprocess --input corpus.jsonl --output-prefix out/corpus \\
--tokenizer-type HuggingFaceTokenizer --tokenizer-model tok/ --append-eod --workers 8``
writes ``out/corpus_text_document.bin`` and ``.idx`` (one pair per ``--json-keys`` key), which is
the prefix that ``train_data_path`` takes.

Why it is shaped this way:

* The files are written by megatron.core's own ``IndexedDatasetBuilder`` with the dtype that
  megatron picks for the vocabulary (``DType.optimal_dtype``), so the reader that trains on them
  is the one that wrote them; only the main process imports megatron (and torch).
* Worker processes parse JSON and tokenize chunks of lines; results come back in input order and
  at most a few chunks per worker are in flight, so memory stays flat on corpora of any size
  (``Pool.imap`` would read the whole input ahead of the workers).
* Outputs are built under a temporary directory beside the final files and renamed into place
  only when every key is complete: a failed or interrupted run leaves no half-written pair and
  never replaces an existing good one. The folder's name carries host and process id, so the
  next run removes one that a killed run left (:func:`remove_stale_partials`).
* Input errors name ``file:line``, since a corpus is too large to search for a bad record by hand.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from primus_runtime.data.tokenizers import TOKENIZER_TYPES, Tokenizer, TokenizerSpec
from primus_runtime.errors import DataError

IN_FLIGHT_PER_WORKER = 4


class PreprocessError(DataError):
    """Preprocessing cannot go on; the message names what to fix."""


class InputLineError(PreprocessError):
    """One line of the input is not a usable document."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path, self.line, self.problem = path, line, problem

    def __reduce__(self) -> tuple[type, tuple[str, int, str]]:
        # raised in a worker process: keep the fields when the pool sends it back
        return type(self), (self.path, self.line, self.problem)


@dataclass
class Chunk:
    """Consecutive raw lines of the input, and the 1-based number of the first one."""

    first_line: int
    lines: list[bytes]


@dataclass
class EncodedChunk:
    """A chunk's documents, per JSON key: all tokens concatenated, and each document's length."""

    n_bytes: int
    tokens: list[np.ndarray]
    lengths: list[np.ndarray]


@dataclass(frozen=True)
class EncodeJob:
    """What every worker needs to encode lines; sent once, to the pool initializer."""

    spec: TokenizerSpec
    path: str
    keys: tuple[str, ...]
    append_eod: bool
    dtype: type[np.number]


_worker: tuple[EncodeJob, Tokenizer] | None = None


def _init_worker(job: EncodeJob) -> None:
    global _worker
    _worker = (job, job.spec.load())


def _encode_chunk(chunk: Chunk) -> EncodedChunk:
    assert _worker is not None, "the pool initializer did not run"
    return encode_lines(chunk, *_worker)


def encode_lines(chunk: Chunk, job: EncodeJob, tokenizer: Tokenizer) -> EncodedChunk:
    """Parse and tokenize one chunk; blank lines are skipped, anything else unusable raises."""
    flat: list[list[int]] = [[] for _ in job.keys]
    lengths: list[list[int]] = [[] for _ in job.keys]
    n_bytes = 0
    for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
        n_bytes += len(raw)
        if not raw.strip():
            continue
        for i, text in enumerate(_texts(raw, job, line_no)):
            ids = tokenizer.encode(text)
            if job.append_eod:
                ids.append(tokenizer.eod)
            flat[i].extend(ids)
            lengths[i].append(len(ids))
    return EncodedChunk(n_bytes, [np.array(f, dtype=job.dtype) for f in flat],
                        [np.array(n, dtype=np.int64) for n in lengths])


def _texts(raw: bytes, job: EncodeJob, line_no: int) -> list[str]:
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputLineError(job.path, line_no, f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.pos + 1}") from None
    except UnicodeDecodeError as exc:
        raise InputLineError(job.path, line_no, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if not isinstance(doc, dict):
        raise InputLineError(job.path, line_no, f"expected a JSON object, got {type(doc).__name__}")
    texts = []
    for key in job.keys:
        if key not in doc:
            raise InputLineError(job.path, line_no, f"missing key {key!r} (--json-keys; the object has {sorted(doc)})")
        if not isinstance(doc[key], str):
            raise InputLineError(job.path, line_no, f"{key!r} is a JSON {type(doc[key]).__name__}, expected a string")
        texts.append(doc[key])
    return texts


def read_chunks(path: Path, chunk_size: int) -> Iterator[Chunk]:
    """Yield the file's lines in chunks of ``chunk_size``, bytes as read (workers decode them)."""
    with path.open("rb") as f:
        lines: list[bytes] = []
        first = 1
        for line_no, line in enumerate(f, start=1):
            lines.append(line)
            if len(lines) == chunk_size:
                yield Chunk(first, lines)
                first, lines = line_no + 1, []
        if lines:
            yield Chunk(first, lines)


def ordered_map(pool: Any, fn: Callable[[Chunk], EncodedChunk], items: Iterable[Chunk],
                depth: int) -> Iterator[EncodedChunk]:
    """``pool.imap`` in input order, but with at most ``depth`` items read ahead of the consumer."""
    pending: deque[Any] = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= depth:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


@dataclass
class Totals:
    """Counts for the progress display and the final report."""

    start: float = field(default_factory=time.perf_counter)
    documents: int = 0
    tokens: list[int] = field(default_factory=list)
    n_bytes: int = 0

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def rates(self) -> str:
        s = max(self.seconds(), 1e-9)
        return f"{self.documents / s:,.0f} docs/s, {self.n_bytes / s / 1e6:.1f} MB/s"


def output_prefixes(output_prefix: str, keys: Iterable[str]) -> list[str]:
    """Megatron's naming: one ``{prefix}_{key}_document`` dataset per JSON key."""
    return [f"{output_prefix}_{key}_document" for key in keys]


def preprocess(args: argparse.Namespace, log: TextIO = sys.stderr) -> Totals:
    """Tokenize ``args.input`` into one indexed dataset per JSON key; see the module docstring."""
    source = Path(args.input)
    if not source.is_file():
        raise PreprocessError(f"--input {source} is not a file")
    spec = TokenizerSpec(args.tokenizer_type, args.tokenizer_model, args.eod_token)
    tokenizer = spec.load()  # in this process too: bad paths fail before any worker starts

    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    job = EncodeJob(spec, str(source), tuple(args.json_keys), args.append_eod, dtype)
    finals = [Path(p) for p in output_prefixes(args.output_prefix, args.json_keys)]
    out_dir = finals[0].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_partials(out_dir, finals[0].name):
        print(f"removed {stale}, left by an interrupted run", file=log)
    staging = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(finals[0].name)}{socket.gethostname()}-{os.getpid()}-",
                                    dir=out_dir))
    try:
        temps = [staging / p.name for p in finals]
        builders = [IndexedDatasetBuilder(f"{t}.bin", dtype=dtype) for t in temps]
        totals = Totals(tokens=[0] * len(finals))
        _run(source, job, args, builders, totals, log)
        for builder, temp in zip(builders, temps):
            builder.finalize(f"{temp}.idx")
        for temp, final in zip(temps, finals):
            os.replace(f"{temp}.bin", f"{final}.bin")
            os.replace(f"{temp}.idx", f"{final}.idx")
        return totals
    finally:
        shutil.rmtree(staging, ignore_errors=True)


#: a staging folder of another host is only taken for abandoned after this long
STALE_FOREIGN_S = 24 * 3600


def _partial_prefix(name: str) -> str:
    return f".{name}.partial-"


def remove_stale_partials(out_dir: Path, name: str) -> list[Path]:
    """Remove staging folders that runs killed with SIGKILL (or a lost node) left behind; return them.

    A staging folder is named ``.<name>.partial-<host>-<pid>-<random>``: one of this host whose
    process is gone is abandoned; one of another host is taken for abandoned only when untouched
    for a day (its process cannot be asked); one of a live process is a concurrent run, kept.
    """
    removed = []
    now = time.time()
    for folder in out_dir.glob(f"{_partial_prefix(name)}*"):
        owner = folder.name[len(_partial_prefix(name)):].split("-")
        pid = int(owner[-2]) if len(owner) >= 3 and owner[-2].isdigit() else None
        host = "-".join(owner[:-2]) if pid is not None else None
        if host == socket.gethostname() and pid is not None:
            abandoned = not _alive(pid)
        else:
            try:
                abandoned = now - folder.stat().st_mtime > STALE_FOREIGN_S
            except OSError:
                continue
        if abandoned and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def _run(source: Path, job: EncodeJob, args: argparse.Namespace, builders: list[Any], totals: Totals, log: TextIO) -> None:
    from tqdm import tqdm

    bar = tqdm(total=source.stat().st_size, unit="B", unit_scale=True, unit_divisor=1000, file=log,
               disable=args.quiet or not log.isatty(), desc=source.name, dynamic_ncols=True)
    next_log = args.log_interval
    with multiprocessing.Pool(args.workers, initializer=_init_worker, initargs=(job,)) as pool, bar:
        chunks = read_chunks(source, args.chunk_size)
        for encoded in ordered_map(pool, _encode_chunk, chunks, args.workers * IN_FLIGHT_PER_WORKER):
            for k, builder in enumerate(builders):
                tokens, lengths = encoded.tokens[k], encoded.lengths[k]
                offset = 0
                for length in lengths.tolist():
                    builder.add_document(tokens[offset:offset + length], [length])
                    offset += length
                totals.tokens[k] += len(tokens)
            totals.documents += len(encoded.lengths[0])
            totals.n_bytes += encoded.n_bytes
            bar.update(encoded.n_bytes)
            bar.set_postfix_str(f"{totals.documents:,} docs, {totals.rates()}", refresh=False)
            if bar.disable and not args.quiet and totals.documents >= next_log:
                print(f"processed {totals.documents:,} documents ({totals.rates()})", file=log, flush=True)
                next_log += args.log_interval


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m primus_runtime preprocess",
                                description="Tokenize a JSONL corpus into Megatron .bin/.idx files.")
    p.add_argument("--input", required=True, help="JSONL file, one JSON object per line")
    p.add_argument("--output-prefix", required=True,
                   help="writes {prefix}_{key}_document.bin/.idx for each JSON key")
    p.add_argument("--tokenizer-type", required=True, metavar="TYPE", help=f"one of {', '.join(TOKENIZER_TYPES)}")
    p.add_argument("--tokenizer-model", required=True, metavar="PATH",
                   help="local tokenizer.json (or its directory) or SentencePiece .model; nothing is downloaded")
    p.add_argument("--eod-token", help="EOD token of a Hugging Face tokenizer (default: eos_token of tokenizer_config.json)")
    p.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY", help="keys to tokenize (default: text)")
    p.add_argument("--append-eod", action="store_true", help="append the EOD token to every document")
    p.add_argument("--workers", type=_positive, default=1, help="tokenizer processes (default: 1)")
    p.add_argument("--chunk-size", type=_positive, default=256, help="lines per task sent to a worker (default: 256)")
    p.add_argument("--log-interval", type=_positive, default=10000,
                   help="documents between progress lines when stderr is not a terminal (default: 10000)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--partitions", type=_positive, default=1,
                   help="accepted for Megatron-LM/Primus command lines; --workers already splits the work, and "
                        "the output is always one .bin/.idx pair per key")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m primus_runtime preprocess``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        totals = preprocess(args)
    except (DataError, OSError) as exc:  # DataError covers bad input and tokenizer problems
        print(f"error: {exc}", file=sys.stderr)
        return DataError.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    for prefix, tokens in zip(output_prefixes(args.output_prefix, args.json_keys), totals.tokens):
        print(f"wrote {prefix}.bin/.idx: {totals.documents:,} documents, {tokens:,} tokens")
    print(f"{totals.n_bytes / 1e6:.1f} MB in {totals.seconds():.1f} s ({totals.rates()}, {args.workers} workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
