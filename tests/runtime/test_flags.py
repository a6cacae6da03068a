"""Configured Primus flags against the installed megatron-core: every way they can disagree."""

from __future__ import annotations

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
    assert flags.problems(params, {}, DOCUMENTED, info, trainer_implemented=frozenset()) == [
        "pp_warmup=True: primus_runtime's trainer does not implement this flag"]
    assert flags.problems(params, {}, DOCUMENTED, info, trainer_implemented=frozenset({"pp_warmup"})) == []


def test_every_problem_is_reported_at_once() -> None:
    params = {**defaults(), "pp_warmup": True, "disable_wandb": False}
    with pytest.raises(FlagError, match=r"^2 flag\(s\) do not fit .*disable_wandb=False: .*; pp_warmup=True: "):
        flags.check(params, {}, DOCUMENTED, wheel(None))


def test_shipped_module_config_holds_every_flag_at_its_default() -> None:
    _, shipped = load_schema(config_root(), {})
    for name, flag in DOCUMENTED.items():
        assert shipped.values[name] == flag.default, name
        assert shipped.origins[name].where.endswith("pre_trainer.yaml"), name


def test_documented_flags_agree_with_the_patchsets() -> None:
    """Every flag a patch declares is documented with the same version; defaults agree except
    where Primus's configs deliberately differ from megatron-core's upstream default."""
    primus_defaults_differ = {"moe_router_force_load_balancing_type"}
    patchsets = load_patchsets(REPO / "patchsets")
    declared = {flag.name: flag for version in patchsets.versions for patch in version.patches for flag in patch.flags}
    assert declared, "the patchsets declare flags"
    for name, flag in declared.items():
        assert name in DOCUMENTED, f"{name} is declared by a patch but missing from configs/flags.yaml"
        assert DOCUMENTED[name].version == flag.version, name
        if name not in primus_defaults_differ:
            assert DOCUMENTED[name].default == flag.default, name


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
