"""Training and validation data: megatron.core's GPT datasets, read in consumed-samples order.

``mock_data`` builds ``MockGPTDataset``; otherwise ``GPTDataset`` over indexed ``.bin/.idx`` files
(``data_path`` split by ``split``, or ``train/valid/test_data_path``), both through
``BlendedMegatronDatasetBuilder``. The datasets need only the tokenizer's end-of-document id
and vocabulary size: :class:`TokenIds` carries them, read from ``tokenizer_model`` when set.

Sample order is the dataset's; the sampler hands each data-parallel rank its slice of every
global batch, starting at ``consumed_samples``, so a resumed run continues where the saved one
stopped. Only the pipeline's first and last stages read data (tokens and labels/loss mask).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from primus_runtime.errors import ConfigError

log = logging.getLogger("primus_runtime.trainer")


@dataclass(frozen=True)
class TokenIds:
    """What GPTDataset asks of a tokenizer."""

    vocab_size: int
    eod: int
    pad: int = -1  # none: GPTDataset pads nothing when it drops partial sequences
    unique_identifiers: dict[str, Any] = field(default_factory=dict, hash=False)


def token_ids(params: Mapping[str, Any]) -> TokenIds:
    """For mock data, ``vocab_size`` with EOD = its last id (no tokenizer is loaded: the zoo's
    ``tokenizer_model`` is a hub name); for real data, from ``tokenizer_type``/``tokenizer_model``."""
    if params.get("mock_data") and params.get("vocab_size") is not None:
        vocab = int(params["vocab_size"])
        return TokenIds(vocab, vocab - 1, unique_identifiers={"class": "mock", "vocab_size": vocab})
    if not params.get("tokenizer_model"):
        raise ConfigError("mock_data needs vocab_size, and real data tokenizer_model (the tokenizer the data was "
                          "made with): the dataset needs its end-of-document id")
    from primus_runtime.data.tokenizers import TokenizerError, TokenizerSpec

    try:
        tok = TokenizerSpec(str(params.get("tokenizer_type") or "HuggingFaceTokenizer"),
                            str(params["tokenizer_model"])).load()
    except TokenizerError as exc:
        raise ConfigError(f"tokenizer_model: {exc}") from None
    return TokenIds(tok.vocab_size, tok.eod, unique_identifiers={"class": tok.name,
                                                                 "model": str(params["tokenizer_model"])})


def ensure_dataset_helpers(params: Mapping[str, Any], rank: int) -> str:
    """``disable_compile_dependencies`` (spec M3): build megatron's C++ dataset helpers at run time?

    True (the default) never builds them: wheels ship ``helpers_cpp``. False compiles
    ``helpers.cpp`` when ``helpers_cpp`` is not importable, on each node's local rank 0 (the
    others wait), as the wheel build does (:mod:`primus_runtime.data.helper_build`; megatron's
    ``compile_helpers`` runs a Makefile megatron-core does not have). Returns what happened.
    """
    have = importlib.util.find_spec("megatron.core.datasets.helpers_cpp") is not None
    if have:
        return "dataset helpers: helpers_cpp is installed"
    if params["disable_compile_dependencies"]:
        return ("dataset helpers: helpers_cpp is not installed and disable_compile_dependencies is true, so it is "
                "not built; datasets will fail to import it")
    built = "by local rank 0"
    if int(os.environ.get("LOCAL_RANK", rank)) == 0:
        import megatron.core.datasets

        from primus_runtime.data.helper_build import compile_helper

        log.info("> compiling megatron's dataset helper (disable_compile_dependencies is false)")
        built = str(compile_helper(Path(next(iter(megatron.core.datasets.__path__)))))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    importlib.invalidate_caches()
    return f"dataset helpers: compiled at run time (disable_compile_dependencies is false): {built}"


DATA_KEYS = ("data_path", "train_data_path", "valid_data_path", "test_data_path")


def check_data(params: Mapping[str, Any]) -> None:
    """Every dataset prefix readable (a :class:`DataError` naming the file otherwise), on every rank,
    before megatron opens any; then rank 0 removes damaged cached sample orders, to be rebuilt."""
    from primus_runtime.data.indexed_check import check_prefix, prefixes, repair_index_cache

    keys = ("data_path",) if params.get("data_path") else DATA_KEYS[1:]
    found = [(key, prefix) for key in keys for prefix in prefixes(key, params.get(key))]
    for key, prefix in found:
        check_prefix(prefix, key)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return  # megatron builds the cache on rank 0 while the others wait, and so is it repaired
    cache = params.get("data_cache_path")
    folders = [Path(cache)] if cache else [Path(prefix) / "cache" / "GPTDataset_indices" for _, prefix in found]
    for warning in repair_index_cache(folders):
        log.warning(warning)


def _blend(value: Any) -> tuple[list[str], list[float] | None] | None:
    from megatron.core.datasets.utils import get_blend_from_list

    if value is None:
        return None
    return get_blend_from_list([str(v) for v in (value if isinstance(value, list) else str(value).split())])


def build_datasets(params: Mapping[str, Any], ids: TokenIds, sizes: list[int], needs_data: bool,
                   dp_size: int) -> tuple[Any, Any, Any]:
    """(train, valid, test) datasets; every rank must call this (the builder synchronises)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    mock = bool(params.get("mock_data"))
    if not mock:
        check_data(params)
    per_split = [_blend(params.get(k)) for k in ("train_data_path", "valid_data_path", "test_data_path")]
    blend = None if mock else _blend(params.get("data_path"))
    if not mock and blend is None and not any(per_split):
        raise ConfigError("no data: set data_path (or train/valid/test_data_path), or mock_data: true")
    config = GPTDatasetConfig(
        random_seed=int(params["seed"]), sequence_length=int(params["seq_length"]),
        blend=blend, blend_per_split=None if mock or blend is not None else per_split,
        split=str(params["split"]) if blend is not None or mock else None,
        path_to_cache=params.get("data_cache_path"), tokenizer=ids,
        reset_position_ids=bool(params.get("reset_position_ids")),
        reset_attention_mask=bool(params.get("reset_attention_mask")),
        eod_mask_loss=bool(params.get("eod_mask_loss")), create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )
    cls = MockGPTDataset if mock else GPTDataset
    return BlendedMegatronDatasetBuilder(cls, sizes, lambda: needs_data, config).build()


class ConsumedSamplesSampler:
    """Batches of sample indices for this data-parallel rank, from ``consumed`` on.

    Each global batch is ``gbs`` consecutive indices; each microbatch step takes ``mbs x dp`` of
    them and this rank the ``[rank*mbs, (rank+1)*mbs)`` slice, as Megatron-LM's sampler does.
    """

    def __init__(self, total: int, consumed: int, micro_batch: int, dp_rank: int, dp_size: int) -> None:
        self.total, self.consumed = total, consumed
        self.micro, self.rank, self.size = micro_batch, dp_rank, dp_size

    def __len__(self) -> int:
        return (self.total - self.consumed) // (self.micro * self.size)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro * self.size
        for start in range(self.consumed, self.total - step + 1, step):
            first = start + self.rank * self.micro
            yield list(range(first, first + self.micro))


def loader(dataset: Any, consumed: int, micro_batch: int, dp_rank: int, dp_size: int,
           workers: int) -> Iterator[Any] | None:
    """An endless-enough iterator of microbatches (dicts of tensors) from ``consumed`` on; None without data."""
    if dataset is None:
        return None
    sampler = ConsumedSamplesSampler(len(dataset), consumed, micro_batch, dp_rank, dp_size)
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                            pin_memory=torch.cuda.is_available(),
                                            persistent_workers=workers > 0))


def split_sizes(train_iters: int, gbs: int, eval_interval: int, eval_iters: int) -> list[int]:
    """Samples needed per split: all training steps, every evaluation, and one test pass."""
    evals = (train_iters // eval_interval + 1) * eval_iters if eval_interval and eval_iters else 0
    return [train_iters * gbs, evals * gbs, eval_iters * gbs]
