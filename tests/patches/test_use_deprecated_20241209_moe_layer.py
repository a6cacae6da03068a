"""use_deprecated_20241209_moe_layer (spec D3): megatron-core 0.10.0's MoE layer, imported into the
wheel at build time, built by TransformerLayer behind the flag; flag off is upstream.

Training with the flag (loss after 10 iterations against the current layer, alltoall and
allgather, EP=1 and EP=2, Mixtral- and DeepSeek-V2-Lite-style) is in tests/cpu/test_flags_training.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # noqa: F401  (the probes need it installed)

from rewriter.build import Applied
from rewriter.emit.manifest import build_manifest
from tests.patches.conftest import json_arg, run_probe

pytestmark = pytest.mark.slow

FLAG = "use_deprecated_20241209_moe_layer"
PATCH = FLAG
PACKAGE = "megatron/core/_primus/moe_20241209"
PINNED = "megatron.core.transformer.moe.moe_layer.MoELayer"
DEPRECATED = "megatron.core._primus.moe_20241209.layer.DeprecatedMoELayer"
MODULES = ("moe_layer", "experts", "router", "token_dispatcher", "legacy_a2a_token_dispatcher", "moe_utils",
           "shared_experts", "grouped_gemm_util")


def probe(tree: Path, tmp_path: Path, configs: dict) -> dict:
    import json

    out = tmp_path / "probe.json"
    run_probe(tree, "deprecated_moe_probe.py", str(out), json_arg({"configs": configs}))
    return json.loads(out.read_text())


def test_flag_off_builds_upstreams_layer_and_on_builds_the_deprecated_one(cpu_trees, tmp_path) -> None:
    """The spec's acceptance, on construction: with the flag, MoE layer instances are the deprecated
    layer; without it (and on the unpatched tree), upstream's MoELayer. Both dispatchers, and the
    shared-expert (DeepSeek-style) and alltoall_seq (0.10.0's legacy dispatcher) variants."""
    shared = {"moe_shared_expert_intermediate_size": 48}
    on = probe(cpu_trees["patched"], tmp_path, {
        "alltoall": {FLAG: True},
        "allgather": {FLAG: True, "moe_token_dispatcher_type": "allgather"},
        "shared": {FLAG: True, **shared},
        "alltoall_seq": {FLAG: True, "moe_token_dispatcher_type": "alltoall_seq"},
        "off": {FLAG: False},
        "off-shared": shared,
    })
    assert on == {"alltoall": DEPRECATED, "allgather": DEPRECATED, "shared": DEPRECATED,
                  "alltoall_seq": DEPRECATED, "off": PINNED, "off-shared": PINNED}
    upstream = probe(cpu_trees["upstream"], tmp_path, {"default": {}, "flag": {FLAG: True}})
    assert upstream["default"] == PINNED
    assert upstream["flag"].startswith("TypeError") and FLAG in upstream["flag"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"moe_token_dispatcher_type": "flex", "moe_enable_deepep": True},
     "moe_token_dispatcher_type='flex': megatron-core 0.10.0 has no such dispatcher"),
    ({"moe_router_score_function": "sigmoid"},
     "moe_router_score_function='sigmoid': megatron-core 0.10.0's TransformerConfig has no moe_router_score_function"),
    ({"moe_router_load_balancing_type": "seq_aux_loss"},
     "moe_router_load_balancing_type='seq_aux_loss': megatron-core 0.10.0's TopKRouter accepts one of aux_loss, sinkhorn, none"),
    ({"moe_shared_expert_gate": True, "moe_shared_expert_intermediate_size": 48},
     "moe_shared_expert_gate=True: megatron-core 0.10.0's TransformerConfig has no moe_shared_expert_gate"),
], ids=["flex", "sigmoid", "seq-aux-loss", "shared-gate"])
def test_what_the_old_layer_cannot_honour_fails_at_config_time(cpu_trees, tmp_path, overrides, message) -> None:
    got = probe(cpu_trees["patched"], tmp_path, {"case": {FLAG: True, **overrides}})["case"]
    assert got.startswith(f"ValueError: {FLAG}: the 2024-12-09 MoE layer cannot run this configuration: ")
    assert message in got
    off = probe(cpu_trees["patched"], tmp_path, {"case": overrides})["case"]
    assert "2024-12-09" not in off  # without the flag, upstream decides


def test_imported_modules_and_their_provenance(applied: Applied) -> None:
    """Every 0.10.0 module is in the patched tree with its provenance header, and the manifest
    records release, tag, release digest and each source's sha256."""
    tree = applied.tree(applied.patchsets.newest())
    for name in MODULES:
        text = tree[f"{PACKAGE}/{name}.py"]
        assert f"# primus: {PATCH}: imported from megatron-core 0.10.0 (core_r0.10.0, source digest sha256:" in text
        assert "megatron.core.transformer.moe." not in text.replace("megatron.core.transformer.moe.moe_utils import", "")
    manifest = build_manifest(applied.upstream, applied.patchsets, applied.result, applied.patchsets.newest())
    entry = next(p for p in manifest["patches"] if p["id"] == PATCH)
    imported = [e["imported_from"] for e in entry["edits"] if e["op"] == "import_module"]
    assert sorted(i["source"] for i in imported) == sorted(f"megatron/core/transformer/moe/{m}.py" for m in MODULES)
    assert {i["release"] for i in imported} == {"0.10.0"}
    assert {i["source_digest"] for i in imported} == {
        "sha256:3362c20adbd5e7d18a35c91d492d881df6186c44c465656b465df5781e99655e"}
    assert all(len(i["sha256"]) == 64 for i in imported)


def test_flag_off_the_new_code_is_unreachable(applied: Applied) -> None:
    """Outside the new package, the patch only adds the field, its guarded check and the guarded
    spec swap: nothing imports the package unless the flag is on."""
    changes = applied.result.patch_changes(PATCH)
    outside = {p for p in changes if not p.startswith(PACKAGE)}
    assert outside == {"megatron/core/transformer/transformer_config.py", "megatron/core/transformer/transformer_layer.py"}
    for path in outside:
        before, after = changes[path]
        added = [ln.strip() for ln in after.splitlines() if ln.strip() and ln.strip() not in (before or "")]
        imports = [ln for ln in added if "moe_20241209" in ln]
        assert imports and all(ln.startswith("from megatron.core._primus.moe_20241209") for ln in imports)
        guard = after.index(f"if self.{FLAG}:" if "config" in path else f"if self.config.{FLAG}:")
        assert guard < after.index("from megatron.core._primus.moe_20241209")
