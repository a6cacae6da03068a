"""``python -m primus_runtime``: train, inspect and check experiment configs, prepare data.

Commands that take ``--exp`` accept trainer overrides after it as ``--key value`` (highest
precedence; see :mod:`primus_runtime.config.loader`). Errors a user can fix print one line and
exit non-zero: 2 for config errors, 3 for flags the installed megatron-core cannot honour,
4 for data errors, 5 for checkpoints that cannot be read or written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from primus_runtime.config.loader import Experiment, config_root, load_experiment
from primus_runtime.errors import PrimusRuntimeError


class OutputError(PrimusRuntimeError):
    """A command cannot write the file it was asked to."""


def _experiment(args: argparse.Namespace, rest: Sequence[str]) -> Experiment:
    return load_experiment(Path(args.exp), rest)


def _format(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


def cmd_show(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """Every resolved parameter with the file and line (or command line) that set it."""
    exp = _experiment(args, rest)
    print(f"# experiment {exp.path}: exp_name={exp.exp_name} work_group={exp.work_group} "
          f"user_name={exp.user_name} workspace={exp.workspace}")
    print(f"# module config {exp.module_config}; model config {exp.model_config}")
    keys = sorted(exp.changed() if args.changed else exp.params)
    if args.key:
        keys = [k for k in keys if any(pattern in k for pattern in args.key)]
    width = max((len(k) for k in keys), default=0)
    for key in keys:
        origin = exp.origins[key]
        print(f"{key:<{width}} = {_format(exp.params[key])}    # {origin} ({origin.layer})")
    return 0


def cmd_dump(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """The resolved parameters as YAML: what the trainer will run with."""
    exp = _experiment(args, rest)
    document = {
        "work_group": exp.work_group, "user_name": exp.user_name, "exp_name": exp.exp_name,
        "workspace": exp.workspace, "params": dict(sorted(exp.params.items())),
    }
    text = yaml.safe_dump(document, sort_keys=False)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"-o {args.output}: cannot write: {exc.strerror}") from None
    else:
        sys.stdout.write(text)
    return 0


def cmd_check(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """Resolve the experiment and check its flags against the installed megatron-core."""
    from primus_runtime import flags
    from primus_runtime.wheel_info import installed_megatron_core

    exp = _experiment(args, rest)
    wheel = installed_megatron_core()
    documented = flags.load_documented(config_root() / "flags.yaml")
    flags.check(exp.params, exp.origins, documented, wheel)
    changed = sorted(k for k in documented if exp.params.get(k) != documented[k].default)
    build = f"patchset {wheel.patchset_version}" if wheel.patched else "upstream"
    print(f"ok: {exp.path}: megatron-core {wheel.version} ({build}); "
          f"flags set: {', '.join(changed) if changed else 'none'}")
    return 0


def cmd_train(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """Train under torchrun (one process per GPU; gloo on CPU). Flags are checked before any heavy work.

    A failure on one rank ends every rank of the job with the first failing rank's message
    (:mod:`primus_runtime.trainer.fatal`).
    """
    from primus_runtime.trainer import fatal
    from primus_runtime.trainer.main import train

    try:
        return train(Path(args.exp), rest)
    except (Exception, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        first = fatal.report(exc)
        if first is not None:
            raise first from None
        raise


def _delegate(target: str, needs_megatron: bool = False) -> Callable[[argparse.Namespace, Sequence[str]], int]:
    """A command whose own parser lives in another module (it gets the remaining arguments).

    ``needs_megatron``: say what to install, on one line, before the module imports megatron.core.
    """

    def run(args: argparse.Namespace, rest: Sequence[str]) -> int:
        if needs_megatron and not {"-h", "--help"} & set(rest):
            from primus_runtime.wheel_info import megatron_core_package

            megatron_core_package()
        module_name, _, function = target.partition(":")
        module = __import__(module_name, fromlist=[function])
        return int(getattr(module, function)(list(rest)))

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m primus_runtime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_exp(name: str, help_text: str, handler: Callable[[argparse.Namespace, Sequence[str]], int]
                 ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, allow_abbrev=False,
                                 description=help_text + " Trainer overrides (--key value) may follow.")
        command.add_argument("--exp", required=True, help="experiment YAML file")
        command.set_defaults(handler=handler)
        return command

    show = with_exp("show", "Print the resolved config with where each value came from.", cmd_show)
    show.add_argument("--changed", action="store_true", help="only values that differ from the defaults")
    show.add_argument("--key", action="append", help="only keys containing this text (repeatable)")
    dump = with_exp("dump", "Write the resolved config as YAML.", cmd_dump)
    dump.add_argument("-o", "--output", help="file to write (default: standard output)")
    with_exp("check", "Check the experiment's flags against the installed megatron-core.", cmd_check)
    with_exp("train", "Train the experiment (launch with torchrun, one process per GPU).", cmd_train)
    for name, target, help_text in (
        ("params", "primus_runtime.model.param_count:main",
         "Count model parameters on the meta device (zoo names or model YAML files)."),
        ("preprocess", "primus_runtime.data.preprocess:main",
         "Tokenize a JSONL corpus into Megatron .bin/.idx files."),
    ):
        command = sub.add_parser(name, help=help_text, add_help=False)
        command.set_defaults(handler=_delegate(target, needs_megatron=True))
    timeline = sub.add_parser("pp-timeline", add_help=False,
                              help="Draw a dump_pp_data folder (HTML or PNG) and print its bubble fraction.")
    timeline.set_defaults(handler=_delegate("primus_runtime.timeline.cli:main"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return args.handler(args, rest)
    except PrimusRuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `show ... | head`: the reader has all it wants; say nothing more, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
