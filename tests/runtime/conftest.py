"""Running megatron code for the runtime's tests.

The trees are ``cpu_trees`` of tests/conftest.py (``patched``: the newest patchset version;
``upstream``: the pinned source as is; both cpu-test flavor). Tests run megatron code from a
tree in a subprocess (``run_in_tree``, forked from the tree's server in ``tests/procs.py``): the test process itself never imports megatron.core, so
trees with different patch levels never meet in one interpreter.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from tests.procs import REPO, fork_server

__all__ = ["REPO", "run_in_tree", "texts"]


def run_in_tree(tree: Path, *args: str, cwd: Path | None = None, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python *args`` as a fresh process with ``tree`` (and this repository) importable, forked
    from the tree's fork server (torch and megatron.core already imported); output is captured."""
    return fork_server(tree).run(*args, cwd=cwd, check=check, env=env)


WORDS = "the quick brown fox jumps over a lazy dog while data flows through eight GPUs — naïve café 東京".split()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL corpus made here (nothing is downloaded): 200 short documents, a blank line and an empty text."""
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    lines = [json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(3, 60))) + f" #{i}", "id": i},
                        ensure_ascii=i % 2 == 0) for i in range(199)]
    lines.insert(50, "")
    lines.append(json.dumps({"text": ""}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def texts(corpus: Path) -> list[str]:
    return [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def hf_dir(corpus: Path) -> Path:
    """A tiny BPE tokenizer trained on the corpus, saved as a Hugging Face tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts(corpus), trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"]))
    out = corpus.parent / "hf"
    out.mkdir()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    return out
