"""What the trainer's checkpoint of an experiment's model holds, read off the model itself.

The experiment's ``GPTModel`` is built whole (TP = PP = EP = 1) on the meta device, with the
local layer spec and sequential experts, and asked for its ``sharded_state_dict`` with the
trainer's metadata. That lists every key the trainer saves and loads, with its global shape
and where each of this one rank's pieces sits in it (the layer axis that stacks homogeneous
layers, the expert axis, the two halves of a SwiGLU ``linear_fc1``). Those keys are the same for
every TP/PP/EP layout, for TransformerEngine's layer spec (the local spec maps its norm names
onto TE's) and for grouped-GEMM experts: dist_checkpointing reshards at load.

Each piece is a view of one model parameter (megatron's factories cut views such as the SwiGLU
halves); it is recorded as the parameter's name and the view's size, stride and offset, so the
converter can cut the same view from a real tensor without megatron doing the save.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from primus_runtime.convert.errors import ConversionError


@dataclass(frozen=True)
class Piece:
    """One chunk of a checkpoint tensor: ``key`` at ``offset`` (global), cut from parameter ``param``."""

    key: str
    global_shape: tuple[int, ...]
    offset: tuple[int, ...]
    size: tuple[int, ...]  # the chunk's size in the global tensor (1 on the prepended axes)
    param: str
    view: tuple[tuple[int, ...], tuple[int, ...], int]  # as_strided size, stride, storage offset

    def cut(self, tensor: torch.Tensor) -> torch.Tensor:
        """This piece of the full parameter ``tensor``, shaped as it is stored."""
        size, stride, start = self.view
        return tensor.as_strided(size, stride, start).reshape(self.size)


@dataclass(frozen=True)
class SavedObject:
    """A ShardedObject of the model (a layer's ``_extra_state``), saved as megatron's torch_dist does."""

    unique_key: str
    data: Any


@dataclass(frozen=True)
class Layout:
    pieces: tuple[Piece, ...]
    objects: tuple[SavedObject, ...]
    shapes: Mapping[str, tuple[int, ...]]  # every parameter a piece is cut from, with its shape

    def pieces_of(self, param: str) -> list[Piece]:
        return [p for p in self.pieces if p.param == param]


def model_layout(params: Mapping[str, Any]) -> Layout:
    """The checkpoint layout of the model ``params`` (an experiment's resolved params) describes."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, apply_factories

    from primus_runtime.model.builder import build_gpt_model
    from primus_runtime.model.config_map import transformer_config
    from primus_runtime.model.param_count import WHOLE_MODEL_ON_META, world_of_one

    if params.get("mtp_num_layers"):
        raise ConversionError("mtp_num_layers: multi-token-prediction layers are not converted; set it to null "
                              "(the converted model trains without MTP)")
    # the vocabulary padded as the trainer pads it at the experiment's TP, though built here at TP=1
    divisible = int(params.get("make_vocab_size_divisible_by", 128)) * int(params.get("tensor_model_parallel_size", 1))
    params = {**params, "make_vocab_size_divisible_by": divisible}
    config = transformer_config(params, **WHOLE_MODEL_ON_META)
    with world_of_one(), torch.device("meta"):
        model = build_gpt_model(params, config, use_te=False)
        sharded = model.sharded_state_dict(metadata={"singleton_local_shards": False})
        apply_factories(sharded)
        names = {id(t): n for n, t in model.state_dict(keep_vars=True).items() if isinstance(t, torch.Tensor)}
        pieces, objects, shapes = [], [], {}
        for item in nested_values(sharded):
            if isinstance(item, ShardedObject):
                objects.append(SavedObject(item.unique_key, item.data))
                continue
            assert isinstance(item, ShardedTensor) and item.flattened_range is None, item
            data = item.data
            base = data._base if data._base is not None else data
            name = names[id(base)]
            shapes[name] = tuple(base.shape)
            size = (1,) * item.prepend_axis_num + tuple(data.shape)
            pieces.append(Piece(item.key, tuple(item.global_shape), tuple(item.global_offset), size, name,
                                (tuple(data.shape), tuple(data.stride()), data.storage_offset())))
    return Layout(tuple(pieces), tuple(objects), shapes)
