"""Configured Primus flags against the installed megatron-core: every way they can disagree."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from primus_runtime import flags
from primus_runtime.config.loader import config_root, load_schema
from primus_runtime.config.schema import Origin
from primus_runtime.errors import FlagError
from primus_runtime.wheel_info import WheelInfo
from rewriter.patchset.loader import load_patchsets

REPO = Path(__file__).resolve().parents[2]
DOCUMENTED = flags.load_documented(config_root() / "flags.yaml")
HERE = Origin("exp.yaml", 12, "overrides")


def wheel(patchset: str | None, names: tuple[str, ...] = (), version: str = "0.16.1") -> WheelInfo:
    if patchset is None:
        return WheelInfo(version=version, patched=False, manifest=None)
    manifest = {"patchset": {"version": patchset}, "flags": [{"name": n} for n in names]}
    return WheelInfo(version=f"{version}+primus.{patchset}", patched=True, manifest=manifest)


def defaults() -> dict[str, object]:
    return {name: flag.default for name, flag in DOCUMENTED.items()}


def test_defaults_fit_every_megatron_core() -> None:
    for info in (wheel(None), wheel("v0.1.0"), wheel("v0.4.0", tuple(DOCUMENTED))):
        assert flags.problems(defaults(), {}, DOCUMENTED, info) == []


def test_unpatched_megatron_core_takes_no_primus_flag() -> None:
    params = {**defaults(), "moe_router_force_load_balancing": True}
    with pytest.raises(FlagError, match=r"moe_router_force_load_balancing=True \(exp.yaml:12\): megatron-core 0.16.1 "
                                        r"is upstream, which has no Primus flags"):
        flags.check(params, {"moe_router_force_load_balancing": HERE}, DOCUMENTED, wheel(None))


def test_flag_upstream_has_itself() -> None:
    params = {**defaults(), "moe_permute_fusion": True}
    assert flags.problems(params, {}, DOCUMENTED, wheel(None, version="0.16.1")) == []
    assert "is upstream" in flags.problems(params, {}, DOCUMENTED, wheel(None, version="0.10.0"))[0]


def test_manual_split_fits_an_upstream_with_the_layout() -> None:
    """The runtime maps decoder_pipeline_manual_split_list onto pipeline_model_parallel_layout, which
    megatron-core has had since 0.13.1 (0.10.0 has not; there only a patched build takes it)."""
    params = {**defaults(), "decoder_pipeline_manual_split_list": [1, 3]}
    assert flags.problems(params, {}, DOCUMENTED, wheel(None, version="0.16.1")) == []
    assert "is upstream" in flags.problems(params, {}, DOCUMENTED, wheel(None, version="0.10.0"))[0]


def test_flag_newer_than_the_wheel() -> None:
    params = {**defaults(), "moe_use_fused_router_with_aux_score": True}
    found = flags.problems(params, {"moe_use_fused_router_with_aux_score": HERE}, DOCUMENTED,
                           wheel("v0.1.0", ("moe_router_force_load_balancing",)))
    assert found == ["moe_use_fused_router_with_aux_score=True (exp.yaml:12): the flag is from patchset v0.2.0, "
                     "newer than the installed megatron-core 0.16.1+primus.v0.1.0 (patchset v0.1.0); build the "
                     "wheel with --patchset v0.2.0 or newer"]


def test_flag_the_wheel_does_not_have() -> None:
    params = {**defaults(), "enable_primus_turbo": True}
    found = flags.problems(params, {}, DOCUMENTED, wheel("v0.4.0", ("moe_permute_fusion",)))
    assert found == ["enable_primus_turbo=True: the installed megatron-core 0.16.1+primus.v0.4.0 does not implement "
                     "this v0.2.0 flag (it is documented, but no patch of patchset v0.4.0 declares it)"]


def test_trainer_flag_needs_the_trainer() -> None:
    params = {**defaults(), "pp_warmup": True}
    info = wheel("v0.4.0", ("pp_warmup",))
    unimplemented = {**DOCUMENTED, "pp_warmup": dataclasses.replace(DOCUMENTED["pp_warmup"], runtime_module=None)}
    assert flags.problems(params, {}, unimplemented, info) == [
        "pp_warmup=True: primus_runtime's trainer does not implement this flag"]
    assert flags.problems(params, {}, DOCUMENTED, info) == []


def test_every_trainer_flag_names_the_module_that_implements_it() -> None:
    """The registry's runtime_module of each trainer flag exists and reads the flag."""
    trainer = {name: flag for name, flag in DOCUMENTED.items() if flag.scope == "trainer"}
    assert trainer
    for name, flag in trainer.items():
        assert flag.runtime_module, name
        spec = importlib.util.find_spec(flag.runtime_module)
        assert spec is not None and spec.origin, f"{name}: no module {flag.runtime_module}"
        assert name in Path(spec.origin).read_text(encoding="utf-8"), f"{flag.runtime_module} does not read {name}"


def test_upstream_behaviour_fits_an_unpatched_megatron_core() -> None:
    """moe_router_force_load_balancing_type: uniform is upstream's own behaviour (megatron-core's
    default, while Primus configs default to even): an unpatched megatron-core takes it."""
    params = {**defaults(), "moe_router_force_load_balancing_type": "uniform"}
    assert DOCUMENTED["moe_router_force_load_balancing_type"].default == "even"
    assert flags.problems(params, {}, DOCUMENTED, wheel(None)) == []
    assert flags.problems(params, {}, DOCUMENTED, wheel("v0.1.0", ("moe_router_force_load_balancing_type",))) == []
    forced = {**params, "moe_router_force_load_balancing": True}
    assert flags.problems(forced, {}, DOCUMENTED, wheel(None)) == [
        "moe_router_force_load_balancing=True: megatron-core 0.16.1 is upstream, which has no Primus flags; "
        "install a primus-rewriter build (v0.1.0 or newer) or leave it at False"]


def test_every_problem_is_reported_at_once() -> None:
    params = {**defaults(), "pp_warmup": True, "disable_wandb": False}
    with pytest.raises(FlagError, match=r"^2 flag\(s\) do not fit .*disable_wandb=False: .*; pp_warmup=True: "):
        flags.check(params, {}, DOCUMENTED, wheel(None))


def test_every_flag_takes_its_default_from_the_registry() -> None:
    schema, shipped = load_schema(config_root(), {})
    for name, flag in DOCUMENTED.items():
        assert shipped.values[name] == flag.default, name
        assert shipped.origins[name].where.endswith("flags.yaml"), name
        assert shipped.origins[name].line == flag.line, name
    assert schema.options["decoder_pipeline_manual_split_list"].nullable
    assert schema.options["moe_router_force_load_balancing_type"].choices == ("uniform", "even")


def test_shipped_examples_resolve_and_fit_the_newest_wheel() -> None:
    """Every example experiment resolves and asks only for flags the v0.4.0 build implements."""
    from primus_runtime.config.loader import load_experiment

    patchsets = load_patchsets(REPO / "patchsets")
    implemented = tuple(f.name for v in patchsets.versions for p in v.patches for f in p.flags)
    examples = sorted((config_root() / "examples").glob("*.yaml"))
    assert len(examples) >= 15
    for path in examples:
        exp = load_experiment(path, env={})
        assert flags.problems(exp.params, exp.origins, DOCUMENTED, wheel("v0.4.0", implemented)) == [], path.name
