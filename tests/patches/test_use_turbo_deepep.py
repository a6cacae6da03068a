"""use_turbo_deepep, turbo_deepep_num_cu, turbo_deepep_use_comm_stream, turbo_sync_free_moe_stage.

Spec D10-D13 (shared/reference/flags-spec.md). The portable dispatcher (no deep_ep here) runs in
real ``MoELayer``s as forked ranks with gloo (``deepep_probe.py``) and is compared with upstream's
alltoall dispatcher built from the same weights: outputs and every gradient within fp32 rounding,
dispatch -> identity experts -> combine returns ``hidden * sum(probs)``, and the per-expert counts
exchanged on the device equal the routing map's columns summed over the EP group. The sync-free
check makes ``Tensor.item/tolist/cpu/numpy``, tensor truth values, data-shaped ops (``nonzero``,
``masked_select``, ``unique``) and boolean-mask indexing raise during one MoE layer's forward and
backward: stage 0 (upstream's alltoall) must raise, stages 2 and 3 must not. The
``deep_ep`` branches are dispatch tests with stand-ins (``deepep_config_probe.py``): they show which
upstream backend and numbers the config gets; no DeepEP kernel ran here. The CUDA sync-debug test
runs only where CUDA is (the ``gpu`` marker; tests/conftest.py deselects it elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.patches.conftest import HERE, json_arg, run_probe
from tests.procs import fork_server, free_port, run_python

pytestmark = pytest.mark.slow

TURBO = {"enable_primus_turbo": True}
DEEPEP = {**TURBO, "use_turbo_deepep": True}
GROUPED = {**TURBO, "use_turbo_grouped_mlp": True}
#: fp32's machine epsilon
FP32_EPS = 2.0**-23
#: the longest reduction in the probe's layer (the FFN width of fc2): what another summation order
#: or matmul blocking (padded row counts) can move, relative to the largest value
TOLERANCE = 48 * FP32_EPS


def stage(n: int) -> dict:
    return {**TURBO, "turbo_sync_free_moe_stage": n}


def launch(tree: Path, tmp_path: Path, name: str, cases: list[dict], nproc: int = 2, cuda: bool = False) -> list:
    """Run deepep_probe.py's cases as ``nproc`` ranks: forked from the tree's fork server on the CPU,
    under torchrun on a GPU (where importing megatron.core initialises CUDA in the server, and a
    forked child cannot again); rank 0's results (every rank's are checked alike)."""
    out = tmp_path / name
    args = [str(HERE / "deepep_probe.py"), str(out), json_arg({"cases": cases, "cuda": cuda})]
    if cuda:
        run_python("-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
                   *args, tree=tree)
    else:
        fork_server(tree).run_ranks(nproc, *args)
    ranks = [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in range(nproc)]
    for results in ranks[1:]:
        assert [r.get("candidate") for r in results] == [r.get("candidate") for r in ranks[0]]
    return [list(per_case) for per_case in zip(*ranks)]


def assert_close(result: dict) -> None:
    for name, diff in result["diffs"][0].items():
        assert diff <= TOLERANCE * max(result["scale"][name], 1e-30), (name, diff, result["scale"][name])


@pytest.fixture(scope="module")
def ep2(cpu_trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """One EP=2 launch for every multi-process case of this module."""
    cases = {
        "exact": {"case": "compare", "candidate": DEEPEP},
        "comm_stream": {"case": "compare", "candidate": {**DEEPEP, "turbo_deepep_use_comm_stream": True,
                                                          "turbo_deepep_num_cu": 8}},
        "stage2": {"case": "compare", "reference": GROUPED, "candidate": stage(2)},
        "stage3": {"case": "compare", "reference": GROUPED, "candidate": stage(3)},
        "topk3": {"case": "compare", "reference": {"moe_router_topk": 3},
                  "candidate": {**DEEPEP, "moe_router_topk": 3}},
        "identity": {"case": "identity", "candidate": DEEPEP},
        "identity_stage2": {"case": "identity", "candidate": stage(2)},
        "identity_stage3": {"case": "identity", "candidate": stage(3)},
        "sync_stage0": {"case": "sync", "candidate": {}},
        "sync_deepep": {"case": "sync", "candidate": DEEPEP},
        "sync_stage1": {"case": "sync", "candidate": stage(1)},
        "sync_stage2": {"case": "sync", "candidate": stage(2)},
        "sync_stage3": {"case": "sync", "candidate": stage(3)},
        "sync_stage0_stand_in": {"case": "sync", "candidate": {}, "stand_in_experts": True},
        "sync_deepep_stand_in": {"case": "sync", "candidate": stage(2), "stand_in_experts": True},
    }
    results = launch(cpu_trees["patched"], tmp_path_factory.mktemp("deepep"), "ep2", list(cases.values()))
    return dict(zip(cases, results))


def test_portable_dispatcher_matches_upstream_alltoall_at_ep2(ep2: dict[str, list]) -> None:
    """Same weights, same inputs per rank: outputs, input, router and expert gradients agree with the
    alltoall dispatcher (seen: bit-identical without padding, <= 1e-7 relative with it)."""
    for name in ("exact", "comm_stream", "stage2", "stage3", "topk3"):
        for rank_result in ep2[name]:
            assert rank_result["reference"]["dispatcher"] == "MoEAlltoAllTokenDispatcher", name
            assert rank_result["candidate"] == {"dispatcher": "MoEFlexTokenDispatcher",
                                                "manager": "PortableDeepEPManager", "dispatcher_type": "flex"}
            assert_close(rank_result)


def test_comm_stream_and_num_cu_change_nothing_on_the_portable_path(ep2: dict[str, list]) -> None:
    """On CPU the stream is a no-op and the compute units have no effect: the same numbers as without."""
    for exact, other in zip(ep2["exact"], ep2["comm_stream"]):
        assert exact["diffs"] == other["diffs"]


def test_dispatch_identity_combine_returns_hidden_times_summed_probs(ep2: dict[str, list]) -> None:
    """Upstream's dispatcher test pattern; and the counts exchanged on the device are the routing
    map's columns summed over EP. What the experts get: exactly those counts, or at stage 2 the
    padding in the last expert's share, or at stage 3 a fixed worst-case segment each."""
    for name in ("identity", "identity_stage2", "identity_stage3"):
        for result in ep2[name]:
            assert result["max_error"] <= 4 * FP32_EPS * result["scale"], (name, result)
            assert result["exchanged_counts"] == result["expected_counts"], (name, result)
    slots, local, topk = 2 * 16, 4, 2  # EP=2 ranks x 16 tokens each; 8 experts over 2 ranks; top-2
    for result in ep2["identity"]:
        assert result["tokens_per_expert"] == result["expected_counts"]
        assert result["rows"] == sum(result["expected_counts"])
    for result in ep2["identity_stage2"]:
        assert result["rows"] == slots * min(topk, local) == sum(result["tokens_per_expert"])
        assert result["tokens_per_expert"][:-1] == result["expected_counts"][:-1]
    for result in ep2["identity_stage3"]:
        assert result["tokens_per_expert"] == [slots] * local and result["rows"] == slots * local


def test_stages_2_and_3_read_nothing_on_the_host_in_the_moe_layer(ep2: dict[str, list]) -> None:
    """Router, dispatch, grouped experts, combine, forward and backward: no host read at stages 2
    and 3. Upstream's alltoall (stage 0) reads (``.numpy()`` of its split sizes), as do
    use_turbo_deepep alone (the exact row count, ``.item()``) and stage 1 -- the check sees reads."""
    assert {r["host_read"] for r in ep2["sync_stage0"]} == {"numpy"}
    assert {r["host_read"] for r in ep2["sync_deepep"]} == {"item"}
    assert {r["host_read"] for r in ep2["sync_stage1"]} == {"numpy"}
    for name in ("sync_stage2", "sync_stage3"):
        assert {r["host_read"] for r in ep2[name]} == {None}, name
        assert ep2[name][0]["candidate"]["manager"] == "PortableDeepEPManager"
    # the dispatcher alone (experts that only scale rows): stage 0 reads, the portable one does not
    assert {r["host_read"] for r in ep2["sync_stage0_stand_in"]} == {"numpy"}
    assert {r["host_read"] for r in ep2["sync_deepep_stand_in"]} == {None}


def test_one_process_portable_dispatcher_matches_alltoall(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """TPxEP = 1: the portable manager exchanges with itself (upstream's flex dispatcher refuses it)."""
    [[exact], [padded]] = launch(cpu_trees["patched"], tmp_path, "ep1", [
        {"case": "compare", "candidate": DEEPEP},
        {"case": "compare", "reference": GROUPED, "candidate": stage(3)},
    ], nproc=1)
    assert_close(exact)
    assert_close(padded)


def test_host_read_detector_sees_what_synchronises_on_a_gpu() -> None:
    """The CPU stand-in for CUDA's sync debug mode catches each kind of host wait it claims to."""
    import torch

    from tests.patches.deepep_probe import HostRead, no_host_reads

    x = torch.arange(6.0)
    mask = x > 2
    waits = {"boolean mask indexing": lambda: x[mask], "nonzero": lambda: torch.nonzero(mask),
             "masked_select": lambda: x.masked_select(mask), "unique": lambda: x.unique(),
             "item": lambda: x.sum().item(), "tolist": lambda: x.tolist(), "__bool__": lambda: bool(x[0] > 1)}
    for name, call in waits.items():
        with pytest.raises(HostRead, match=name), no_host_reads():
            call()
    with no_host_reads():  # static-shape indexing and arithmetic pass
        assert x[1:3].shape == x[torch.tensor([0, 2])].shape == (2,)
    assert x[mask].tolist() == [3.0, 4.0, 5.0]  # restored afterwards


@pytest.fixture(scope="module")
def config_results(cpu_trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("deepep-config") / "config.json"
    run_probe(cpu_trees["patched"], "deepep_config_probe.py", str(out))
    return json.loads(out.read_text())


def test_stage_table(config_results: dict) -> None:
    """Resolved in __post_init__ before upstream's checks; exactly the fields docs/runtime.md lists."""
    stages = config_results["stages"]
    assert config_results["stage_table"] == {
        "0": [],
        "1": ["moe_use_fused_router_with_aux_score", "moe_permute_fusion"],
        "2": ["moe_use_fused_router_with_aux_score", "moe_permute_fusion", "use_turbo_deepep", "use_turbo_grouped_mlp"],
        "3": ["moe_use_fused_router_with_aux_score", "moe_permute_fusion", "use_turbo_deepep", "use_turbo_grouped_mlp"],
    }
    assert not any(stages["0"][name] for name in ("moe_use_fused_router_with_aux_score", "moe_permute_fusion",
                                                   "use_turbo_deepep", "use_turbo_grouped_mlp"))
    assert stages["0"]["moe_token_dispatcher_type"] == stages["1"]["moe_token_dispatcher_type"] == "alltoall"
    for level in ("1", "2", "3"):
        for name in config_results["stage_table"][level]:
            assert stages[level][name] is True, (level, name)
    assert stages["2"]["moe_token_dispatcher_type"] == stages["3"]["moe_token_dispatcher_type"] == "flex"


def test_inert_without_enable_primus_turbo(config_results: dict) -> None:
    untouched = config_results["stages"]["0"]
    assert config_results["stage_without_turbo"] == untouched
    assert config_results["deepep_without_turbo"] == {**untouched, "use_turbo_deepep": True}
    assert config_results["dense"]["moe_token_dispatcher_type"] == "alltoall"  # no experts: nothing to dispatch


def test_bad_configs_are_refused_naming_the_option(config_results: dict) -> None:
    refused = config_results["refused"]
    assert refused["stage 4"] == ("ValueError: TransformerConfig.turbo_sync_free_moe_stage must be one of 0, 1, 2, 3, "
                                  "got 4")
    assert refused["num_cu 0"].startswith("ValueError: turbo_deepep_num_cu=0")
    assert "moe_shared_expert_overlap: false" in refused["shared expert overlap"]
    assert "moe_pad_expert_input_to_capacity: false" in refused["pad to capacity"]
    assert "moe_router_padding_for_quantization: false" in refused["quantization padding"]


def test_deep_ep_dispatch_maps_num_cu_onto_upstreams_backends(config_results: dict) -> None:
    """Dispatch test (stand-ins for deep_ep's entry points; no DeepEP kernel runs): with DeepEP the
    flex dispatcher's deepep backend with moe_deepep_num_sms = turbo_deepep_num_cu; with only
    HybridEP, hybridep and moe_hybridep_num_sms; PRIMUS_TURBO_BACKEND=torch and sync-free stages 2-3
    force the portable one."""
    deepep, hybridep, portable = config_results["deepep"], config_results["hybridep"], config_results["portable"]
    assert deepep["backend"] == "deepep" and deepep["moe_token_dispatcher_type"] == "flex"
    assert deepep["moe_flex_dispatcher_backend"] == "deepep" and deepep["moe_deepep_num_sms"] == 48
    assert hybridep["backend"] == "hybridep" and hybridep["moe_flex_dispatcher_backend"] == "hybridep"
    assert hybridep["moe_hybridep_num_sms"] == 24 and hybridep["moe_deepep_num_sms"] == 20
    assert portable["moe_token_dispatcher_type"] == "flex" and portable["moe_deepep_num_sms"] == 20
    assert config_results["forced_torch"]["backend"] == "torch"
    # from sync-free stage 2 the portable manager, DeepEP or not (DeepEP's reads its row count on the host)
    assert config_results["deepep_stage2"]["backend"] == "torch"
    assert config_results["deepep_stage2"]["moe_deepep_num_sms"] == 20


def test_comm_stream_flag_reaches_the_managers_stream_arguments(config_results: dict) -> None:
    """Dispatch test: the flex dispatcher hands async_finish / allocate_on_comm_stream = the flag to
    its manager (DeepEP's or the portable one); upstream's flex dispatcher always passes True."""
    assert config_results["streams"]["False"] == [["dispatch", False, False], ["combine", False, False]]
    assert config_results["streams"]["True"] == [["dispatch", True, True], ["combine", True, True]]
    assert config_results["streams_upstream"] == [["dispatch", True, True], ["combine", True, True]]


@pytest.mark.gpu
def test_cuda_sync_debug_mode_stage_0_raises_stages_2_and_3_do_not(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """GPU only (selected where CUDA is): one MoE layer's forward and backward under
    ``torch.cuda.set_sync_debug_mode("error")``, one process over NCCL, bf16 weights so that the
    grouped experts take torch's grouped_mm. The cpu-test flavor tree, whose device module is
    ``torch.cuda`` on a GPU host: without TransformerEngine the default tree's router stops at
    upstream's ``NameError: te_general_gemm`` (seen on an H200, docs/cpu-testing.md)."""
    bf16 = {"bf16": True, "params_dtype": "bfloat16"}
    cases = [{"case": "sync", "candidate": {**bf16, **options}} for options in ({}, stage(2), stage(3))]
    results = launch(cpu_trees["patched"], tmp_path, "cuda", cases, nproc=1, cuda=True)
    stage0, stage2, stage3 = (per_case[0] for per_case in results)
    assert stage0["host_read"] is not None and "synchroniz" in stage0["host_read"]
    assert stage2["host_read"] is None and stage3["host_read"] is None
