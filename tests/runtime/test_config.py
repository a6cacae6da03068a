"""Experiment resolution: precedence, substitution, inheritance and every kind of bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from primus_runtime.cli import main
from primus_runtime.config.loader import config_root, load_experiment, parse_cli_overrides, resolve_model
from primus_runtime.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small config root shaped like the shipped one."""
    root = tmp_path / "configs"
    write(root / "modules" / "module_base.yaml", "trainable: false\nstderr_sink_level: INFO\n")
    write(root / "modules" / "pre_trainer.yaml", """
        bases: [module_base.yaml]
        trainable: true
        train_iters: null
        lr: 1.0e-4
        micro_batch_size: 1
        lr_decay_style: linear
        save: null
        exp_tag: base
        """)
    write(root / "models" / "megatron" / "language_model.yaml", """
        num_layers: 2
        hidden_size: 64
        swiglu: false
        """)
    write(root / "models" / "megatron" / "family_base.yaml", """
        extends: [language_model.yaml]
        swiglu: true
        num_layers: 4
        """)
    write(root / "models" / "megatron" / "family_1B.yaml", """
        bases:
          - family_base.yaml
        hidden_size: 128
        """)
    return root


def experiment(tmp_path: Path, overrides: str = "", head: str = "", model: str = "family_1B.yaml") -> Path:
    body = textwrap.indent(textwrap.dedent(overrides).strip(), " " * 6)
    return write(tmp_path / "exp.yaml", f"""
{head}
modules:
  pre_trainer:
    framework: megatron
    config: pre_trainer.yaml
    model: {model}
    overrides:
{body if body.strip() else '      {}'}
""")


def test_precedence_and_provenance(tmp_path: Path, root: Path) -> None:
    write(tmp_path / "my_module.yaml", "bases: [pre_trainer.yaml]\nlr: 2.0e-4\nmicro_batch_size: 2\nhidden_size: 32\n")
    path = write(tmp_path / "exp.yaml", """
        exp_name: demo
        modules:
          pre_trainer:
            config: my_module.yaml
            model: family_1B.yaml
            overrides:
              micro_batch_size: 4
              train_iters: 10
        """)
    exp = load_experiment(path, ["--train_iters", "20"], env={}, root=root)
    p, o = exp.params, exp.origins
    assert p["stderr_sink_level"] == "INFO" and o["stderr_sink_level"].layer == "module"
    assert p["lr"] == 2.0e-4 and o["lr"].layer == "module" and o["lr"].line == 2
    assert p["hidden_size"] == 128 and o["hidden_size"].layer == "model"  # the model beats the module config
    assert p["swiglu"] is True and o["swiglu"].where.endswith("family_base.yaml")
    assert p["num_layers"] == 4
    assert p["micro_batch_size"] == 4 and o["micro_batch_size"].layer == "overrides" and o["micro_batch_size"].line == 7
    assert p["train_iters"] == 20 and o["train_iters"].layer == "cli" and str(o["train_iters"]) == "command line"
    assert exp.exp_name == "demo" and exp.exp_root == Path("./output/demo")
    assert exp.changed() == {"lr": 2.0e-4, "micro_batch_size": 4, "train_iters": 20, "hidden_size": 128,
                             "swiglu": True, "num_layers": 4}


def test_variables(tmp_path: Path, root: Path) -> None:
    path = experiment(tmp_path, """
        train_iters: ${ITERS:50}
        exp_tag: run-${TAG:none}-$${literal}
        save: ${SAVE_DIR}
        """, head="user_name: ${WHO:nobody}")
    exp = load_experiment(path, env={"SAVE_DIR": "/ckpt", "TAG": "7"}, root=root)
    assert exp.params["train_iters"] == 50 and isinstance(exp.params["train_iters"], int)
    assert exp.params["exp_tag"] == "run-7-${literal}"
    assert exp.params["save"] == "/ckpt"
    assert exp.user_name == "nobody"
    with pytest.raises(ConfigError, match=r"exp.yaml:10: \$\{SAVE_DIR\} is not set and has no default"):
        load_experiment(path, env={}, root=root)


def test_variables_in_bases_and_model_names(tmp_path: Path, root: Path) -> None:
    path = experiment(tmp_path, "", model="${MODEL:family_1B}.yaml")
    assert load_experiment(path, env={}, root=root).params["hidden_size"] == 128
    assert load_experiment(path, env={"MODEL": "family_base"}, root=root).params["hidden_size"] == 64


def test_float_text_and_types(tmp_path: Path, root: Path) -> None:
    exp = load_experiment(experiment(tmp_path, "lr: 1e-2"), env={}, root=root)
    assert exp.params["lr"] == 0.01  # PyYAML reads 1e-2 as text; Primus configs write it
    with pytest.raises(ConfigError, match=r"exp.yaml:7: micro_batch_size expects int, got str 'two'"):
        load_experiment(experiment(tmp_path, "micro_batch_size: two"), env={}, root=root)
    with pytest.raises(ConfigError, match=r"exp.yaml:7: swiglu expects bool, got int 1"):
        load_experiment(experiment(tmp_path, "swiglu: 1"), env={}, root=root)
    with pytest.raises(ConfigError, match=r"exp.yaml:7: lr_decay_style must be one of .*'cosine'.*not 'cosin'"):
        load_experiment(experiment(tmp_path, "lr_decay_style: cosin"), env={}, root=root)
    with pytest.raises(ConfigError, match=r"exp.yaml:7: micro_batch_size cannot be null"):
        load_experiment(experiment(tmp_path, "micro_batch_size: null"), env={}, root=root)


def test_unknown_keys_suggest_the_nearest(tmp_path: Path, root: Path) -> None:
    with pytest.raises(ConfigError, match=r"exp.yaml:7: unknown key 'micro_batchsize'; did you mean 'micro_batch_size'"):
        load_experiment(experiment(tmp_path, "micro_batchsize: 2"), env={}, root=root)
    with pytest.raises(ConfigError, match=r"command line: --hiden_size: unknown key 'hiden_size'; did you mean 'hidden_size'"):
        load_experiment(experiment(tmp_path), ["--hiden_size", "3"], env={}, root=root)
    write(root / "models" / "megatron" / "bad.yaml", "bases: [family_base.yaml]\n\nnum_layer: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: unknown key 'num_layer'; did you mean 'num_layers'"):
        load_experiment(experiment(tmp_path, model="bad.yaml"), env={}, root=root)
    with pytest.raises(ConfigError, match=r"exp.yaml:1: unknown experiment key 'exp_nmae'"):
        load_experiment(experiment(tmp_path, head="exp_nmae: x"), env={}, root=root)


def test_missing_and_cyclic_bases(tmp_path: Path, root: Path) -> None:
    write(root / "models" / "megatron" / "orphan.yaml", "bases: [nowhere.yaml]\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml:1: nowhere.yaml not found \(looked in: "):
        load_experiment(experiment(tmp_path, model="orphan.yaml"), env={}, root=root)
    write(root / "models" / "megatron" / "a.yaml", "bases: [b.yaml]\n")
    write(root / "models" / "megatron" / "b.yaml", "hidden_size: 8\nbases: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"b.yaml:2: cyclic bases: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_experiment(experiment(tmp_path, model="a.yaml"), env={}, root=root)
    write(root / "models" / "megatron" / "both.yaml", "bases: [a.yaml]\nextends: [b.yaml]\n")
    with pytest.raises(ConfigError, match=r"both.yaml:2: use either bases: or extends:, not both"):
        load_experiment(experiment(tmp_path, model="both.yaml"), env={}, root=root)
    with pytest.raises(ConfigError, match=r"exp.yaml:5: missing.yaml not found"):
        load_experiment(experiment(tmp_path, model="missing.yaml"), env={}, root=root)


def test_experiment_shape_errors(tmp_path: Path, root: Path) -> None:
    bad_module = write(tmp_path / "m.yaml", "modules:\n  post_trainer: {}\n")
    with pytest.raises(ConfigError, match=r"m.yaml:1: the experiment needs modules.pre_trainer"):
        load_experiment(bad_module, env={}, root=root)
    extra = write(tmp_path / "x.yaml", "modules:\n  pre_trainer: {config: pre_trainer.yaml, model: family_1B.yaml,"
                  " lr: 1}\n")
    with pytest.raises(ConfigError, match=r"x.yaml:2: unknown key 'lr' in modules.pre_trainer .* under overrides"):
        load_experiment(extra, env={}, root=root)
    torchtitan = write(tmp_path / "t.yaml", "modules:\n  pre_trainer:\n    framework: torchtitan\n")
    with pytest.raises(ConfigError, match=r"t.yaml:3: framework 'torchtitan' is not supported"):
        load_experiment(torchtitan, env={}, root=root)
    broken = write(tmp_path / "broken.yaml", "modules:\n  pre_trainer: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: malformed YAML"):
        load_experiment(broken, env={}, root=root)
    duplicate = write(tmp_path / "dup.yaml", "exp_name: a\nexp_name: b\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:2: duplicate key 'exp_name'"):
        load_experiment(duplicate, env={}, root=root)
    with pytest.raises(ConfigError, match=r"nothing.yaml: experiment file not found"):
        load_experiment(tmp_path / "nothing.yaml", env={}, root=root)


def test_null_default_needs_a_declared_type(tmp_path: Path, root: Path) -> None:
    write(root / "modules" / "pre_trainer.yaml", "bases: [module_base.yaml]\nmystery: null\n")
    with pytest.raises(ConfigError, match=r"pre_trainer.yaml:2: default of 'mystery' is null, so its type must be declared"):
        load_experiment(experiment(tmp_path), env={}, root=root)


def test_cli_override_syntax() -> None:
    assert parse_cli_overrides(["--a", "1", "--b=x y", "--flag", "--dashed-key", "[1, 2]"]) == [
        ("a", "1"), ("b", "x y"), ("flag", "true"), ("dashed_key", "[1, 2]")]
    with pytest.raises(ConfigError, match="command line: expected --key value, got 'stray'"):
        parse_cli_overrides(["stray"])


def test_cli_values_are_typed(tmp_path: Path, root: Path) -> None:
    exp = load_experiment(experiment(tmp_path), ["--lr=3e-4", "--swiglu", "--exp_tag", "123", "--exp_name", "cli"],
                          env={}, root=root)
    assert exp.params["lr"] == 3e-4 and exp.params["swiglu"] is True
    assert exp.params["exp_tag"] == "123"  # a str option keeps the text as typed
    assert exp.exp_name == "cli"


def test_cli_values_that_are_not_yaml_are_one_line_type_errors(tmp_path: Path, root: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment(experiment(tmp_path), ["--micro_batch_size", "[1, "], env={}, root=root)
    assert str(info.value) == "command line: --micro_batch_size: micro_batch_size expects int, got str '[1, '"


def test_resolve_model(root: Path) -> None:
    params = resolve_model("family_1B", env={}, root=root)
    assert (params["hidden_size"], params["num_layers"], params["lr"]) == (128, 4, 1.0e-4)


def test_show_and_dump(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PRIMUS_CONFIG_ROOT", str(root))
    path = experiment(tmp_path, "micro_batch_size: 8")
    assert main(["show", "--exp", str(path), "--changed", "--lr", "5e-5"]) == 0
    out = capsys.readouterr().out
    assert "micro_batch_size = 8    # " in out and "exp.yaml:7 (overrides)" in out
    assert "lr               = 5.0e-05    # command line (cli)" in out
    assert "stderr_sink_level" not in out
    target = tmp_path / "resolved.yaml"
    assert main(["dump", "--exp", str(path), "-o", str(target)]) == 0
    assert "micro_batch_size: 8" in target.read_text()
    assert main(["show", "--exp", str(path), "--micro_batch_sise", "2"]) == 2
    assert "error: command line: --micro_batch_sise: unknown key" in capsys.readouterr().err


def test_show_into_a_closed_pipe_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """`show ... | head -1`: when the reader has gone, no traceback, exit 0."""
    import os
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: every write fails with EPIPE
    stdout = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert main(["show", "--exp", str(config_root() / "examples" / "tiny_llama-cpu.yaml")]) == 0
    finally:
        monkeypatch.undo()
        stdout.close()


@pytest.mark.parametrize("value", ["*nightly", "@alice", "[1, ", "{a: 1", "`tick", "%TAG"])
def test_variable_values_that_are_not_yaml_stay_text(tmp_path: Path, root: Path, value: str) -> None:
    path = experiment(tmp_path, "exp_tag: ${TAG}", head="exp_name: ${PRIMUS_EXP_NAME:x}\nuser_name: ${PRIMUS_USER}")
    exp = load_experiment(path, env={"TAG": value, "PRIMUS_EXP_NAME": value, "PRIMUS_USER": value}, root=root)
    assert (exp.params["exp_tag"], exp.exp_name, exp.user_name) == (value, value, value)


def test_variable_values_still_take_their_yaml_type(tmp_path: Path, root: Path) -> None:
    path = experiment(tmp_path, "micro_batch_size: ${MBS}\ntrain_iters: ${ITERS}")
    with pytest.raises(ConfigError, match=r"exp.yaml:7: micro_batch_size expects int, got str .\[1, ."):
        load_experiment(path, env={"MBS": "[1, ", "ITERS": "3"}, root=root)
    assert load_experiment(path, env={"MBS": "4", "ITERS": "3"}, root=root).params["micro_batch_size"] == 4


def test_files_that_are_not_utf8_name_the_line_and_byte(tmp_path: Path, root: Path) -> None:
    path = experiment(tmp_path, "exp_tag: caf\u00e9")
    raw = path.read_bytes()
    offset = raw.index("\u00e9".encode())
    path.write_bytes(raw.replace("\u00e9".encode(), b"\xe9"))
    with pytest.raises(ConfigError) as info:
        load_experiment(path, env={}, root=root)
    line = raw[:offset].count(b"\n") + 1
    assert str(info.value) == (f"{path}:{line}: not UTF-8 text (byte offset {offset}: 0xe9); save the file as UTF-8")


def test_alias_bomb_is_refused_quickly(tmp_path: Path, root: Path) -> None:
    """A "billion laughs" model file: 9 levels of 10 aliases would expand to 10**9 values."""
    import time

    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    write(root / "models" / "megatron" / "bomb.yaml", "extends: [language_model.yaml]\n" + "\n".join(levels) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb.yaml:1: refused: its aliases expand to more than 100000 values"):
        load_experiment(experiment(tmp_path, model="bomb.yaml"), env={}, root=root)
    assert time.monotonic() - started < 5


def test_recursive_alias_is_refused(tmp_path: Path, root: Path) -> None:
    write(root / "models" / "megatron" / "loop.yaml", "extends: [language_model.yaml]\nloop: &x [1, *x]\n")
    with pytest.raises(ConfigError, match=r"loop.yaml:2: recursive YAML alias"):
        load_experiment(experiment(tmp_path, model="loop.yaml"), env={}, root=root)


def test_aliases_within_the_cap_still_work(tmp_path: Path, root: Path) -> None:
    write(root / "models" / "megatron" / "anchors.yaml",
          "extends: [language_model.yaml]\nnum_layers: &n 6\nhidden_size: *n\n")
    params = load_experiment(experiment(tmp_path, model="anchors.yaml"), env={}, root=root).params
    assert (params["num_layers"], params["hidden_size"]) == (6, 6)
