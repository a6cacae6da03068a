"""The trainer's checkpoint format, written and read one tensor at a time with torch.distributed.checkpoint.

Writing: a save planner whose plan is the layout's pieces (one chunk of a global key each, at its
offset, as megatron's torch_dist strategy writes them) and whose ``resolve_data`` makes each
piece only when the file writer asks for it, from the Hugging Face tensors it is made of; the
``_extra_state`` objects are stored as megatron stores them (``torch.save`` of the list of a key's
objects). megatron's own ``metadata.json`` and ``common.pt`` make the folder a checkpoint the
trainer's ``load`` and ``finetune`` accept, at any TP/PP/EP layout.

Reading: a load planner that asks for exactly the chunks of the keys a set of parameters needs,
written into views of the parameters, so reading a shard of the Hugging Face output costs that
shard, whatever layout the trainer saved.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from primus_runtime.convert.errors import ConversionError
from primus_runtime.convert.layout import Layout, Piece

#: the trainer's checkpoint format: megatron's torch_dist, version 1
SHARDED_BACKEND, BACKEND_VERSION = "torch_dist", 1


class _StreamingSavePlanner(DefaultSavePlanner):
    """Plans the layout's chunks and makes each one when the writer resolves it."""

    def __init__(self, layout: Layout, dtypes: dict[str, torch.dtype], make: Callable[[Piece], torch.Tensor],
                 done: Callable[[], None]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.items: list[WriteItem] = []
        self.sources: dict[MetadataIndex, Piece | bytes] = {}
        for piece in layout.pieces:
            index = MetadataIndex(piece.key, torch.Size(piece.offset))
            chunk = ChunkStorageMetadata(offsets=torch.Size(piece.offset), sizes=torch.Size(piece.size))
            self.items.append(WriteItem(index=index, type=WriteItemType.SHARD, tensor_data=TensorWriteData(
                chunk=chunk, properties=TensorProperties(dtype=dtypes[piece.param]),
                size=torch.Size(piece.global_shape))))
            self.sources[index] = piece
        by_key: dict[str, list[Any]] = {}
        for obj in layout.objects:
            by_key.setdefault(obj.unique_key, []).append(obj.data)
        for key, data in by_key.items():
            buffer = io.BytesIO()
            torch.save(data, buffer)
            index = MetadataIndex(key)
            self.items.append(WriteItem(index=index, type=WriteItemType.BYTE_IO))
            self.sources[index] = buffer.getvalue()
        self.make, self.done = make, done

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self.items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor | io.BytesIO:
        source = self.sources[write_item.index]
        if isinstance(source, bytes):
            return io.BytesIO(source)
        tensor = self.make(source)
        self.done()
        return tensor


def write(folder: Path, layout: Layout, dtypes: dict[str, torch.dtype], make: Callable[[Piece], torch.Tensor],
          done: Callable[[], None], common: dict[str, Any]) -> None:
    """Write a torch_dist checkpoint of ``layout`` into ``folder`` (which exists and is empty)."""
    planner = _StreamingSavePlanner(layout, dtypes, make, done)
    writer = dcp.FileSystemWriter(str(folder), single_file_per_rank=True, thread_count=1)
    dcp.save({}, storage_writer=writer, planner=planner, no_dist=True)
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

    save_config(CheckpointingConfig(SHARDED_BACKEND, BACKEND_VERSION), str(folder))
    from primus_runtime.trainer.checkpoint import COMMON_FILE

    torch.save(common, folder / COMMON_FILE)


class _ChunkLoadPlanner(DefaultLoadPlanner):
    """Reads each requested (key, offset) chunk into the tensor given for it."""

    def __init__(self, targets: list[tuple[str, tuple[int, ...], torch.Tensor]]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.targets = targets
        self.into: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def set_up_planner(self, state_dict: Any, metadata: Metadata | None = None, is_coordinator: bool = False) -> None:
        super().set_up_planner(state_dict, metadata, is_coordinator)
        self.checkpoint = metadata

    def create_local_plan(self) -> LoadPlan:
        items: list[ReadItem] = []
        assert self.checkpoint is not None
        for key, offset, target in self.targets:
            stored = self.checkpoint.state_dict_metadata[key]
            chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=target.shape)
            items += create_read_items_for_chunk_list(key, stored, [chunk])
            self.into[(key, offset)] = target
        return LoadPlan(items)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        target = self.into[(read_item.dest_index.fqn, tuple(read_item.dest_index.offset))]
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            target = target.narrow(dim, start, length)
        return target

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        """Nothing to do: the reader copied into the view that :meth:`resolve_tensor` gave it."""


def stored_tensors(folder: Path) -> dict[str, TensorStorageMetadata]:
    """Every tensor key of the checkpoint in ``folder``, with its global size and dtype."""
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def read_params(folder: Path, layout: Layout, names: Iterable[str],
                stored: dict[str, TensorStorageMetadata]) -> dict[str, torch.Tensor]:
    """The whole-model parameters ``names``, assembled from the checkpoint's chunks in whatever layout it was saved."""
    params: dict[str, torch.Tensor] = {}
    targets: list[tuple[str, tuple[int, ...], torch.Tensor]] = []
    for name in names:
        pieces = layout.pieces_of(name)
        dtype = stored[pieces[0].key].properties.dtype
        params[name] = torch.empty(layout.shapes[name], dtype=dtype)
        for piece in pieces:
            size, stride, start = piece.view
            targets.append((piece.key, piece.offset, params[name].as_strided(size, stride, start).view(piece.size)))
    if targets:
        dcp.load({}, storage_reader=dcp.FileSystemReader(str(folder)), planner=_ChunkLoadPlanner(targets),
                 no_dist=True)
    return params


def check_keys(layout: Layout, stored: dict[str, TensorStorageMetadata], folder: Path) -> None:
    """Refuse a checkpoint that is not of the experiment's model: a key missing or of another shape."""
    problems = []
    for piece in layout.pieces:
        have = stored.get(piece.key)
        if have is None:
            problems.append(f"{piece.key} is missing")
        elif tuple(have.size) != piece.global_shape:
            problems.append(f"{piece.key} is {tuple(have.size)}, the experiment's model has {piece.global_shape}")
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConversionError(f"{folder} does not hold the experiment's model: {'; '.join(unique[:8])}"
                              + (f" (and {len(unique) - 8} more)" if len(unique) > 8 else ""))
