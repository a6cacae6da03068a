"""Hugging Face checkpoints: sharded safetensors with ``model.safetensors.index.json``, read and written
tensor by tensor with the ``safetensors`` library (reads are memory-mapped: one tensor at a time)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from primus_runtime.convert.errors import ConversionError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class HFReader:
    """The tensors of a Hugging Face folder by name, from whichever shard holds each."""

    def __init__(self, folder: Path, stack: ExitStack) -> None:
        from safetensors import safe_open

        self.folder = folder
        index = folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConversionError(f"{index}: not a safetensors index ({exc})") from None
        elif (folder / SINGLE_FILE).is_file():
            weight_map = None
        else:
            raise ConversionError(f"{folder}: neither {INDEX_FILE} nor {SINGLE_FILE} is there (only safetensors "
                                  f"checkpoints are converted)")
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        self.handles: dict[str, Any] = {}
        for file in files:
            path = folder / file
            if not path.is_file():
                raise ConversionError(f"{index}: names {file}, which is missing")
            try:
                self.handles[file] = stack.enter_context(safe_open(str(path), framework="pt"))
            except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
                raise ConversionError(f"{path}: cannot read: {exc}") from None
        self.where = {name: file for file, handle in self.handles.items() for name in handle.keys()}

    def names(self) -> list[str]:
        return list(self.where)

    def get(self, name: str) -> torch.Tensor:
        return self.handles[self.where[name]].get_tensor(name)

    def shape(self, name: str) -> list[int]:
        return list(self.handles[self.where[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        text = self.handles[self.where[name]].get_slice(name).get_dtype()
        return _SAFETENSORS_DTYPES[text]


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def shard_plan(sizes: Sequence[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Names in order, cut into shards of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes:
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write(folder: Path, shards: list[list[str]], produce: Callable[[list[str]], dict[str, torch.Tensor]],
          done: Callable[[int], None]) -> None:
    """Write each shard (its tensors made by ``produce`` just before) and the index naming them."""
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    total = 0
    for number, names in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = produce(names)
        save_file({n: tensors[n].contiguous() for n in names}, str(folder / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update((n, file) for n in names)
        done(len(names))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

