"""Run real ``MoELayer``s with the Turbo DeepEP dispatcher and with upstream's alltoall dispatcher.

Launched as the ranks of a job, forked by the tests or by torchrun (gloo on CPU, NCCL on a GPU; any
world size = the expert-parallel size) in a cpu-test flavor tree (or a default tree on a GPU). Each case builds the MoE MLP of megatron's local
GPT layer spec twice -- a reference config and a candidate config -- with the reference's weights
copied into the candidate, runs forward and backward on the same per-rank input and output
gradient. One launch runs a list of cases and writes each rank's results, in order, to
``OUT.rank<r>.json``:

``compare``
    max |difference| of outputs, input gradients, router-weight gradients and expert-weight
    gradients, and the dispatcher classes / communication managers of both layers.
``identity``
    the candidate's dispatcher alone with identity experts: dispatch -> (x * prob) -> combine must
    return ``hidden * sum(probs)``; and the per-expert counts handed to the experts against the
    routing map's columns gathered over the EP group.
``sync``
    the candidate layer's forward and backward with ``Tensor.item/tolist/cpu/numpy``, tensor
    truth values / int conversions, data-shaped ops (``nonzero``, ``masked_select``, ``unique``,
    ``argwhere``) and boolean-mask indexing raising: the name of the first, or null. With
    ``stand_in_experts`` the experts only scale each row by its probability (to check router,
    dispatch and combine alone: SequentialMLP reads its counts on the host). With ``cuda`` set, ``torch.cuda.set_sync_debug_mode("error")``
    is used instead (on a GPU, ``"cuda": true``).

usage: torchrun --nproc-per-node EP deepep_probe.py OUT JSON_OPTIONS
       ({"cuda": false, "cases": [{"case": "compare"|"identity"|"sync", "reference": {...},
         "candidate": {...}, "seq": 8, "bsz": 2}, ...]})
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

BASE = dict(num_layers=1, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, num_moe_experts=8,
            moe_router_topk=2, moe_aux_loss_coeff=0.01, moe_router_load_balancing_type="aux_loss",
            moe_token_dispatcher_type="alltoall", add_bias_linear=False, gated_linear_unit=True,
            activation_func=F.silu, use_cpu_initialization=True, moe_router_dtype="fp32")
#: what reads a device value on the host
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
#: what has an output shape that depends on device values (the host waits for it on a GPU)
DATA_SHAPED = ("nonzero", "masked_select", "unique", "argwhere")


class HostRead(RuntimeError):
    """A tensor was read on the host inside the checked region."""


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Make every host read of a tensor, every data-shaped op and indexing by a boolean mask raise
    :class:`HostRead` naming it: what synchronises with the host on a GPU, seen on the CPU."""
    targets = [(torch.Tensor, name) for name in HOST_READS + DATA_SHAPED + ("__getitem__",)]
    targets += [(torch, name) for name in DATA_SHAPED]
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]
    getitem = torch.Tensor.__getitem__

    def refusing(name: str) -> Any:
        def read(*args: Any, **kwargs: Any) -> Any:
            raise HostRead(name)
        return read

    def indexing(self: torch.Tensor, index: Any) -> Any:
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts):
            raise HostRead("boolean mask indexing")
        return getitem(self, index)

    for owner, name in targets:
        setattr(owner, name, indexing if name == "__getitem__" else refusing(name))
    try:
        yield
    finally:
        for owner, name, method in saved:
            setattr(owner, name, method)


def build(options: dict, device: torch.device) -> Any:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import TransformerConfig

    options = {**BASE, **options}
    if isinstance(options.get("params_dtype"), str):  # JSON names the dtype
        options["params_dtype"] = getattr(torch, options["params_dtype"])
    config = TransformerConfig(**options)
    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)
    spec = get_gpt_layer_local_spec(num_experts=config.num_moe_experts)
    return build_module(spec.submodules.mlp, config=config).to(device)


def inputs(opts: dict, rank: int, device: torch.device, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-rank input and output gradient, in the layer's parameter dtype."""
    gen = torch.Generator().manual_seed(100 + rank)
    shape = (opts.get("seq", 8), opts.get("bsz", 2), BASE["hidden_size"])
    dtype = layer.config.params_dtype
    return (torch.randn(shape, generator=gen).to(device, dtype), torch.randn(shape, generator=gen).to(device, dtype))


def run(layer: Any, hidden: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    x = hidden.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out, _ = layer(x)
    out.backward(grad)
    grads = {name: p.grad.detach().clone() for name, p in layer.named_parameters() if p.grad is not None}
    return {"out": out.detach(), "dx": x.grad.detach(), **grads}


def describe(layer: Any) -> dict:
    dispatcher = layer.token_dispatcher
    manager = getattr(dispatcher, "_comm_manager", None)
    return {"dispatcher": type(dispatcher).__name__, "manager": type(manager).__name__ if manager else None,
            "dispatcher_type": layer.config.moe_token_dispatcher_type}


def compare(opts: dict, rank: int, device: torch.device) -> dict:
    reference = build(opts.get("reference", {}), device)
    candidate = build(opts.get("candidate", {}), device)
    candidate.load_state_dict(reference.state_dict())
    hidden, grad = inputs(opts, rank, device, reference)
    results = []
    for _ in range(opts.get("repeat", 1)):
        ref, cand = run(reference, hidden, grad), run(candidate, hidden, grad)
        assert ref.keys() == cand.keys(), (sorted(ref), sorted(cand))
        results.append({name: (ref[name] - cand[name]).abs().max().item() for name in ref})
    return {"diffs": results, "reference": describe(reference), "candidate": describe(candidate),
            "scale": {name: value.abs().max().item() for name, value in run(reference, hidden, grad).items()}}


def identity(opts: dict, rank: int, device: torch.device) -> dict:
    from megatron.core import parallel_state

    layer = build(opts.get("candidate", {}), device)
    dispatcher = layer.token_dispatcher
    hidden, _ = inputs(opts, rank, device, layer)
    flat = hidden.reshape(-1, hidden.shape[-1])
    probs, routing_map = layer.router(hidden)
    x, p = dispatcher.dispatch_preprocess(flat, routing_map, probs)
    x, p = dispatcher.token_dispatch(x, p)
    x, tokens_per_expert, permuted_probs = dispatcher.dispatch_postprocess(x, p)
    y = dispatcher.combine_preprocess(x * permuted_probs[:, None].to(x.dtype))
    y = dispatcher.combine_postprocess(dispatcher.token_combine(y))
    expected = flat * probs.sum(dim=-1, keepdim=True)
    # the routing map's columns summed over the EP group: what each expert must receive
    columns = routing_map.sum(dim=0).to(torch.int64)
    torch.distributed.all_reduce(columns, group=parallel_state.get_expert_model_parallel_group())
    first = parallel_state.get_expert_model_parallel_rank() * dispatcher.num_local_experts
    return {"max_error": (y.reshape(flat.shape) - expected).abs().max().item(),
            "scale": expected.abs().max().item(),
            "tokens_per_expert": tokens_per_expert.tolist(), "rows": x.shape[0],
            "expected_counts": columns[first:first + dispatcher.num_local_experts].tolist(),
            "exchanged_counts": getattr(getattr(dispatcher, "_comm_manager", None), "tokens_per_expert",
                                        tokens_per_expert).tolist(),
            "candidate": describe(layer)}


class ScaleByProb(torch.nn.Module):
    """Experts that only scale each row by its probability: sync-free, whatever the counts."""

    def forward(self, hidden: torch.Tensor, tokens_per_expert: torch.Tensor, probs: torch.Tensor) -> tuple:
        return hidden * probs[:, None].to(hidden.dtype), None


def sync(opts: dict, rank: int, device: torch.device) -> dict:
    layer = build(opts.get("candidate", {}), device)
    if opts.get("stand_in_experts"):
        layer.experts = ScaleByProb()
    hidden, grad = inputs(opts, rank, device, layer)
    run(layer, hidden, grad)  # compile and warm up outside the checked region
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run(layer, hidden, grad)
        except RuntimeError as err:
            return {"host_read": str(err).splitlines()[0], "candidate": describe(layer)}
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return {"host_read": None, "candidate": describe(layer)}
    try:
        with no_host_reads():
            run(layer, hidden, grad)
    except HostRead as err:
        return {"host_read": str(err), "candidate": describe(layer)}
    return {"host_read": None, "candidate": describe(layer)}


def main(out: str, opts: dict) -> None:
    from megatron.core import parallel_state

    cuda = bool(opts.get("cuda"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cuda:
        torch.cuda.set_device(rank)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    parallel_state.initialize_model_parallel(expert_model_parallel_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    cases = {"compare": compare, "identity": identity, "sync": sync}
    results = [cases[case["case"]](case, rank, device) for case in opts["cases"]]
    with open(f"{out}.rank{rank}.json", "w") as fh:
        json.dump(results, fh)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
