"""Local tokenizers for data preparation, named as Megatron and Primus users know them.

Two implementations stand behind one small interface (:class:`Tokenizer`): Hugging Face
``tokenizers`` (a ``tokenizer.json``) and SentencePiece (a ``.model``). Nothing is downloaded:
preprocessing runs on cluster nodes that often have no network, and a silent download there
would hang or fetch the wrong revision, so a Hub name is refused with the command that fetches it.

Special tokens follow Megatron's tokenizers of the same name: ``HuggingFaceTokenizer`` and its
aliases apply the tokenizer's own post-processor (e.g. Llama 3 prepends ``<|begin_of_text|>``),
``Llama2Tokenizer`` prepends BOS, ``SentencePieceTokenizer`` adds nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from primus_runtime.errors import DataError


class TokenizerError(DataError):
    """The tokenizer cannot be loaded as asked; the message says what to change."""


class Tokenizer(Protocol):
    """What preprocessing needs from a tokenizer."""

    name: str
    vocab_size: int
    eod: int

    def encode(self, text: str) -> list[int]: ...


HF, SP = "huggingface", "sentencepiece"

# --tokenizer-type → (implementation, prepend BOS explicitly)
TOKENIZER_TYPES: dict[str, tuple[str, bool]] = {
    "HuggingFaceTokenizer": (HF, False),
    "Llama3Tokenizer": (HF, False),
    "SentencePieceTokenizer": (SP, False),
    "GPTSentencePieceTokenizer": (SP, False),
    "Llama2Tokenizer": (SP, True),
}

_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class TokenizerSpec:
    """Picklable recipe for a tokenizer, so that every worker process loads its own copy."""

    type: str
    model: str
    eod_token: str | None = None

    def load(self) -> Tokenizer:
        """Load the tokenizer; raises :class:`TokenizerError` with the fix when it cannot."""
        if self.type not in TOKENIZER_TYPES:
            raise TokenizerError(f"unknown --tokenizer-type {self.type!r}; choose one of {', '.join(TOKENIZER_TYPES)}")
        kind, add_bos = TOKENIZER_TYPES[self.type]
        path = _local_path(self.model)
        if kind == HF:
            return HuggingFaceTokenizer(path, self.type, self.eod_token)
        if self.eod_token is not None:
            raise TokenizerError(f"--eod-token applies to Hugging Face tokenizers; {self.type} takes EOD from the model's eos_id()")
        return SentencePieceTokenizer(path, self.type, add_bos)


def _local_path(model: str) -> Path:
    path = Path(model).expanduser()
    if path.exists():
        return path
    if _HUB_NAME.fullmatch(model) and not model.startswith("."):
        raise TokenizerError(
            f"--tokenizer-model {model!r} is not a local path; it looks like a Hugging Face Hub name, and nothing is "
            f"downloaded here. Fetch the files first, e.g. `huggingface-cli download {model} --include tokenizer.json "
            f"tokenizer_config.json tokenizer.model --local-dir DIR`, then pass DIR")
    raise TokenizerError(f"--tokenizer-model {model!r} does not exist")


class HuggingFaceTokenizer:
    """A ``tokenizers`` ``tokenizer.json``; EOD is the eos token of ``tokenizer_config.json`` or ``--eod-token``."""

    def __init__(self, path: Path, name: str, eod_token: str | None = None) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise TokenizerError(f"{path} holds no tokenizer.json; pass the file or the directory that contains it")
        try:
            self._tok = _HFTokenizer.from_file(str(file))
        except Exception as exc:  # the Rust side raises bare Exception for malformed files
            raise TokenizerError(f"{file} is not a Hugging Face tokenizer.json: {exc}") from exc
        self.name = name
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        token = eod_token or _eos_from_config(file.parent / "tokenizer_config.json")
        if token is None:
            raise TokenizerError(f"no EOD token for {file}: {file.parent / 'tokenizer_config.json'} has no eos_token; "
                                 "pass --eod-token TOKEN (e.g. '</s>' or '<|end_of_text|>')")
        eod = self._tok.token_to_id(token)
        if eod is None:
            raise TokenizerError(f"EOD token {token!r} is not in the vocabulary of {file}")
        self.eod = eod

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids


def _eos_from_config(config: Path) -> str | None:
    if not config.is_file():
        return None
    try:
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise TokenizerError(f"{config} is not a JSON object: {exc}") from exc
    if isinstance(eos, dict):  # an AddedToken, serialized
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


class SentencePieceTokenizer:
    """A SentencePiece ``.model``; EOD is its ``eos_id()``."""

    def __init__(self, path: Path, name: str, add_bos: bool = False) -> None:
        import sentencepiece

        if not path.is_file():
            raise TokenizerError(f"{path} is not a file; {name} takes a SentencePiece .model file")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{path} is not a SentencePiece model: {exc}") from exc
        self.name = name
        self.vocab_size = self._sp.get_piece_size()
        self.eod = self._sp.eos_id()
        if self.eod < 0:
            raise TokenizerError(f"{path} defines no end-of-sentence piece (eos_id() is -1), so it has no EOD token")
        self._bos = [self._sp.bos_id()] if add_bos and self._sp.bos_id() >= 0 else []

    def encode(self, text: str) -> list[int]:
        return self._bos + self._sp.encode(text)
