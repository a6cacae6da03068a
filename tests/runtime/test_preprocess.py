"""JSONL → Megatron .bin/.idx: what megatron.core reads back is what the tokenizer produced.

Tokenizers are trained here, from the test corpus, so nothing is downloaded. The fast tests use
the tokenizer and encoding code in-process (no megatron); the slow ones run the real command in a
subprocess with a staged megatron tree and read the files back through megatron.core.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from primus_runtime.data.preprocess import Chunk, EncodeJob, InputLineError, encode_lines, output_prefixes
from primus_runtime.data.tokenizers import TokenizerError, TokenizerSpec
from tests.runtime.conftest import run_in_tree, texts

READ_INDEXED = str(Path(__file__).parent / "data" / "read_indexed.py")
@pytest.fixture(scope="module")
def sp_model(corpus: Path) -> Path:
    import sentencepiece

    prefix = corpus.parent / "sp"
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts(corpus)), model_prefix=str(prefix),
                                             vocab_size=60, minloglevel=2)
    return prefix.with_suffix(".model")


# --- tokenizers -------------------------------------------------------------------------------

def test_huggingface_tokenizer_takes_eod_from_its_config(hf_dir: Path) -> None:
    for model in (hf_dir, hf_dir / "tokenizer.json"):
        tok = TokenizerSpec("Llama3Tokenizer", str(model)).load()
        assert tok.eod == 1 and 2 < tok.vocab_size <= 400 and tok.encode("the fox")


def test_eod_token_option_and_its_absence(hf_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "tokenizer.json"
    shutil.copy(hf_dir / "tokenizer.json", bare)
    with pytest.raises(TokenizerError, match="has no eos_token; pass --eod-token"):
        TokenizerSpec("HuggingFaceTokenizer", str(bare)).load()
    assert TokenizerSpec("HuggingFaceTokenizer", str(bare), "<unk>").load().eod == 0
    with pytest.raises(TokenizerError, match="'<eos>' is not in the vocabulary"):
        TokenizerSpec("HuggingFaceTokenizer", str(bare), "<eos>").load()


def test_sentencepiece_types(sp_model: Path) -> None:
    plain = TokenizerSpec("SentencePieceTokenizer", str(sp_model)).load()
    llama2 = TokenizerSpec("Llama2Tokenizer", str(sp_model)).load()
    assert plain.eod == 2 and plain.vocab_size == 60  # sentencepiece's default eos_id
    assert llama2.encode("the fox") == [1, *plain.encode("the fox")]  # Megatron's Llama2Tokenizer adds BOS


def test_nothing_is_downloaded_and_names_are_checked() -> None:
    with pytest.raises(TokenizerError, match="Hugging Face Hub name.*huggingface-cli download meta-llama/Llama-3.1-8B"):
        TokenizerSpec("HuggingFaceTokenizer", "meta-llama/Llama-3.1-8B").load()
    with pytest.raises(TokenizerError, match="unknown --tokenizer-type 'GPT2BPE'; choose one of HuggingFaceTokenizer"):
        TokenizerSpec("GPT2BPE", "x").load()
    with pytest.raises(TokenizerError, match="does not exist"):
        TokenizerSpec("SentencePieceTokenizer", "./missing.model").load()


# --- encoding (in-process, no megatron) -------------------------------------------------------

def encode(raw: list[bytes], hf_dir: Path, keys: tuple[str, ...] = ("text",)) -> list[list[int]]:
    import numpy as np

    spec = TokenizerSpec("HuggingFaceTokenizer", str(hf_dir))
    out = encode_lines(Chunk(41, raw), EncodeJob(spec, "in.jsonl", keys, True, np.uint16), spec.load())
    return [t.tolist() + [-1] + n.tolist() for t, n in zip(out.tokens, out.lengths)]


@pytest.mark.parametrize(("line", "problem"), [
    (b'{"text": "a" "b"}', "in.jsonl:42: invalid JSON: Expecting ',' delimiter at column 14"),
    (b'{"body": "a"}', "in.jsonl:42: missing key 'text' (--json-keys; the object has ['body'])"),
    (b'{"text": 3}', "in.jsonl:42: 'text' is a JSON int, expected a string"),
    (b'["text"]', "in.jsonl:42: expected a JSON object, got list"),
    (b'{"text": "\xff"}', "in.jsonl:42: not UTF-8 text"),
])
def test_bad_lines_name_file_and_line(hf_dir: Path, line: bytes, problem: str) -> None:
    with pytest.raises(InputLineError) as info:
        encode([b'{"text": "ok"}\n', line + b"\n"], hf_dir)
    assert str(info.value).startswith(problem)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # survives the trip from a worker


def test_blank_lines_skipped_and_keys_kept_apart(hf_dir: Path) -> None:
    [text, title] = encode([b'{"text": "the fox", "title": "dog"}\n', b"  \n"], hf_dir, ("text", "title"))
    assert text[-2:] == [-1, text.index(-1)] and title[-2:] == [-1, title.index(-1)]  # one document each
    assert output_prefixes("out/c", ["text", "title"]) == ["out/c_text_document", "out/c_title_document"]


# --- the command, read back through megatron.core ---------------------------------------------

def preprocess(tree: Path, corpus: Path, prefix: Path, tokenizer: tuple[str, Path], *extra: str,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_in_tree(tree, "-m", "primus_runtime.data.preprocess", "--input", str(corpus), "--output-prefix",
                       str(prefix), "--tokenizer-type", tokenizer[0], "--tokenizer-model", str(tokenizer[1]),
                       "--chunk-size", "16", *extra, check=check)


def read_back(tree: Path, dataset: Path, *gpt: str) -> dict:
    return json.loads(run_in_tree(tree, READ_INDEXED, str(dataset), *gpt).stdout)


@pytest.mark.slow
def test_round_trip_and_workers_agree(cpu_trees: dict[str, Path], corpus: Path, hf_dir: Path,
                                      tmp_path: Path) -> None:
    tree = cpu_trees["patched"]
    tok = TokenizerSpec("HuggingFaceTokenizer", str(hf_dir)).load()
    proc = preprocess(tree, corpus, tmp_path / "one" / "c", ("HuggingFaceTokenizer", hf_dir), "--append-eod")
    preprocess(tree, corpus, tmp_path / "three" / "c", ("HuggingFaceTokenizer", hf_dir), "--append-eod",
               "--workers", "3")
    expected = [tok.encode(t) + [tok.eod] for t in texts(corpus)]
    assert f"200 documents, {sum(map(len, expected)):,} tokens" in proc.stdout
    data = read_back(tree, tmp_path / "one" / "c_text_document")
    assert data["dtype"] == "uint16" and data["docs"] == expected
    assert data["document_indices"] == list(range(201))  # one sequence per document, as GPTDataset expects
    for suffix in (".bin", ".idx"):
        assert (tmp_path / "one" / f"c_text_document{suffix}").read_bytes() == \
               (tmp_path / "three" / f"c_text_document{suffix}").read_bytes()
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["c_text_document.bin", "c_text_document.idx"]


@pytest.mark.slow
def test_sentencepiece_without_eod(cpu_trees: dict[str, Path], corpus: Path, sp_model: Path,
                                   tmp_path: Path) -> None:
    tree = cpu_trees["upstream"]
    tok = TokenizerSpec("SentencePieceTokenizer", str(sp_model)).load()
    preprocess(tree, corpus, tmp_path / "c", ("SentencePieceTokenizer", sp_model), "--workers", "2")
    docs = read_back(tree, tmp_path / "c_text_document")["docs"]
    assert docs == [tok.encode(t) for t in texts(corpus)] and docs[-1] == []  # the empty text is kept, empty


@pytest.mark.slow
def test_failure_leaves_no_output_and_keeps_a_good_pair(cpu_trees: dict[str, Path], corpus: Path,
                                                        hf_dir: Path, tmp_path: Path) -> None:
    tree = cpu_trees["patched"]
    bad = tmp_path / "bad.jsonl"
    lines = corpus.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(lines[:150] + ['{"text": "unterminated'] + lines[150:]) + "\n", encoding="utf-8")
    good = {s: f"previous run {s}".encode() for s in (".bin", ".idx")}
    for suffix, content in good.items():
        (tmp_path / f"c_text_document{suffix}").write_bytes(content)
    proc = preprocess(tree, bad, tmp_path / "c", ("HuggingFaceTokenizer", hf_dir), "--workers", "2", check=False)
    assert proc.returncode == 4  # DataError
    assert proc.stderr.strip().splitlines() == [f"error: {bad}:151: invalid JSON: Invalid control character "
                                                "at column 23"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "c_text_document.bin", "c_text_document.idx"]
    assert all((tmp_path / f"c_text_document{s}").read_bytes() == c for s, c in good.items())
    hub = preprocess(tree, corpus, tmp_path / "d", ("Llama3Tokenizer", Path("meta-llama/Llama-3.1-8B")), check=False)
    assert hub.returncode == 4 and len(hub.stderr.strip().splitlines()) == 1 and "Hub name" in hub.stderr


@pytest.mark.slow
def test_gpt_dataset_samples_are_the_documents_in_order(cpu_trees: dict[str, Path], corpus: Path,
                                                         hf_dir: Path, helpers_dir: Path, tmp_path: Path) -> None:
    tree, seq = cpu_trees["patched"], 32
    tok = TokenizerSpec("HuggingFaceTokenizer", str(hf_dir)).load()
    preprocess(tree, corpus, tmp_path / "c", ("HuggingFaceTokenizer", hf_dir), "--append-eod")
    gpt = read_back(tree, tmp_path / "c_text_document", "--gpt", str(seq), str(tok.eod), str(tok.vocab_size),
                    str(helpers_dir))["gpt"]
    docs = [tok.encode(t) + [tok.eod] for t in texts(corpus)]
    assert sorted(gpt["document_index"]) == list(range(len(docs)))  # one epoch, every document once
    stream = [t for d in gpt["document_index"] for t in docs[d]]
    starts = [0]
    for d in gpt["document_index"]:
        starts.append(starts[-1] + len(docs[d]))
    assert len(gpt["samples"]) == (len(stream) - 1) // seq
    for (pos, offset), sample in zip(gpt["sample_index"], gpt["samples"]):
        begin = starts[pos] + offset
        assert sample == stream[begin:begin + seq + 1]  # a window of the documents, in GPTDataset's order


def test_the_primus_readme_command_line_parses() -> None:
    """The seed's preprocess command passes --partitions; it is accepted (the workers split the work)."""
    from primus_runtime.data.preprocess import build_parser

    args = build_parser().parse_args(["--input", "in.json", "--output-prefix", "out", "--tokenizer-type",
                                      "SentencePieceTokenizer", "--tokenizer-model", "t.model", "--append-eod",
                                      "--workers", "8", "--partitions", "8"])
    assert (args.workers, args.partitions, args.append_eod) == (8, 8, True)
