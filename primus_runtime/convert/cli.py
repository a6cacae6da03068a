"""``python -m primus_runtime convert hf-to-mcore|mcore-to-hf``: the two directions, checked first, written atomically.

Both commands resolve the experiment (its model config names the architecture), build the
checkpoint layout of its model on the meta device and the per-parameter rules, and check
everything they can before writing a byte: the Hugging Face config against the experiment
(each mismatch named), the tensor names on both sides, the checkpoint's keys and shapes. The
output is built in a hidden folder next to ``--out`` and renamed into place at the end, so a
failure leaves nothing that looks like a checkpoint; an existing ``--out`` is refused.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from primus_runtime.convert.errors import ConversionError

#: the iteration a converted checkpoint is saved as (``finetune`` starts at 0 whatever it is)
CONVERTED_ITERATION = 0
_MTP_LAYER = re.compile(r"model\.layers\.(\d+)\.")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", re.IGNORECASE)


def main(argv: Sequence[str]) -> int:
    """Convert between Hugging Face safetensors and the trainer's checkpoints (trainer overrides may follow)."""
    parser = argparse.ArgumentParser(prog="python -m primus_runtime convert", description=main.__doc__)
    sub = parser.add_subparsers(dest="direction", required=True)
    to_mcore = sub.add_parser("hf-to-mcore", help="Hugging Face folder -> trainer checkpoint (load with finetune)")
    to_mcore.add_argument("--hf", required=True, type=Path, help="folder with config.json and *.safetensors")
    to_hf = sub.add_parser("mcore-to-hf", help="trainer checkpoint -> Hugging Face folder")
    to_hf.add_argument("--ckpt", required=True, type=Path, help="a save folder (its latest iteration) or an iter_* folder")
    to_hf.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)")
    for command in (to_mcore, to_hf):
        command.add_argument("--exp", required=True, type=Path, help="experiment YAML naming the model")
        command.add_argument("--out", required=True, type=Path, help="folder to create (must not exist)")
        command.add_argument("--quiet", action="store_true", help="no progress bar")
    args, rest = parser.parse_known_args(argv)
    from primus_runtime.config.loader import load_experiment

    params = load_experiment(args.exp, rest).params
    if args.direction == "hf-to-mcore":
        hf_to_mcore(args.hf, params, args.out, quiet=args.quiet)
    else:
        mcore_to_hf(args.ckpt, params, args.out, max_shard_bytes=_bytes(args.max_shard_size), quiet=args.quiet)
    return 0


def _bytes(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConversionError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or 1000000")
    return int(float(match.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[match.group(2).upper()])


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """A fresh hidden folder next to ``out``, renamed to ``out`` when the body succeeds, removed otherwise."""
    if out.exists():
        raise ConversionError(f"--out {out} exists; name a new folder (nothing is overwritten)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the result is an ordinary folder
    except OSError as exc:
        raise ConversionError(f"--out {out}: cannot create it: {exc.strerror}") from None
    try:
        yield staging
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _progress(total: int, what: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="tensor", file=sys.stderr, disable=quiet or not sys.stderr.isatty())


def _load_hf_config(folder: Path) -> Any:
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise ConversionError(f"--hf {folder}: config.json is missing")
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        raise ConversionError(f"{folder / 'config.json'}: transformers cannot read it: {exc}") from None


def _model(params: Mapping[str, Any]) -> tuple[str, Any, list[Any]]:
    """The family, the checkpoint layout and the rules of the experiment's model."""
    from primus_runtime.convert import families
    from primus_runtime.convert.layout import model_layout

    family = families.family_of(params)
    problems = families.experiment_problems(params, family)
    if problems:
        raise ConversionError(f"the experiment's model is not a {family} model the converter knows: "
                              + "; ".join(problems))
    layout = model_layout(params)
    padded = layout.shapes["embedding.word_embeddings.weight"][0]
    return family, layout, families.rules(params, family, layout.shapes, padded)


def hf_to_mcore(hf: Path, params: Mapping[str, Any], out: Path, *, quiet: bool = False) -> None:
    """Write the Hugging Face checkpoint in ``hf`` as a trainer checkpoint ``out`` (a ``save`` folder)."""
    from torch.distributed.checkpoint.api import CheckpointException

    from primus_runtime.convert import dcp_io, families
    from primus_runtime.convert.hf_io import HFReader
    from primus_runtime.trainer.checkpoint import CHECKPOINT_VERSION, _cause, iteration_dir
    from primus_runtime.trainer.options import TRACKER_FILE

    family = families.family_of(params)
    config = _load_hf_config(hf)
    if getattr(config, "quantization_config", None):
        raise ConversionError(f"{hf / 'config.json'}: a quantized checkpoint ({config.quantization_config}); "
                              f"convert its bf16 weights")
    wrong = families.mismatches(config, params, family)
    if wrong:
        raise ConversionError(f"{hf / 'config.json'} does not match the experiment's model: " + "; ".join(wrong))
    family, layout, rules = _model(params)
    by_param = {rule.mcore: rule for rule in rules}
    with ExitStack() as stack:
        reader = HFReader(hf, stack)
        _check_names(reader.names(), rules, int(params["num_layers"]), hf)
        _check_shapes(reader, rules, layout.shapes, hf)
        dtypes = {rule.mcore: reader.dtype(rule.hf[0]) for rule in rules}
        cache: dict[str, Any] = {}

        def make(piece: Any) -> Any:
            if piece.param not in cache:
                if len(cache) >= 2:  # the SwiGLU halves of one parameter come one after the other
                    cache.pop(next(iter(cache)))
                rule = by_param[piece.param]
                cache[piece.param] = rule.join([reader.get(name) for name in rule.hf])
            return piece.cut(cache[piece.param]).clone()

        common = {"checkpoint_version": CHECKPOINT_VERSION, "iteration": CONVERTED_ITERATION,
                  "consumed_train_samples": 0, "consumed_valid_samples": 0, "converted_from": str(hf)}
        with atomic_folder(out) as staging, _progress(len(layout.pieces), "hf-to-mcore", quiet) as bar:
            folder = iteration_dir(staging, CONVERTED_ITERATION)
            folder.mkdir()
            try:
                dcp_io.write(folder, layout, dtypes, make, lambda: bar.update(1), common)
            except (Exception, CheckpointException) as exc:  # torch wraps a writer's error in a BaseException
                raise ConversionError(f"cannot write {out}: {_cause(exc)}") from None
            (staging / TRACKER_FILE).write_text(f"{CONVERTED_ITERATION}\n", encoding="utf-8")
    print(f"converted {hf} ({family}, {len(rules)} parameters) to {out}: load it with `load: {out}` and "
          f"`finetune: true`")


def _check_names(have: Sequence[str], rules: Sequence[Any], num_layers: int, hf: Path) -> None:
    """Every tensor the rules need is there, and nothing else but multi-token-prediction layers."""
    needed = {name for rule in rules for name in rule.hf}
    missing = sorted(needed - set(have))
    extra = sorted(set(have) - needed)
    mtp = [n for n in extra if (m := _MTP_LAYER.match(n)) and int(m.group(1)) >= num_layers]
    extra = [n for n in extra if n not in mtp]
    problems = ([f"missing {', '.join(missing[:6])}" + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")]
                if missing else [])
    if extra:
        problems.append(f"not part of the experiment's model: {', '.join(extra[:6])}"
                        + (f" and {len(extra) - 6} more" if len(extra) > 6 else ""))
    if problems:
        raise ConversionError(f"{hf}: " + "; ".join(problems))
    if mtp:
        print(f"note: {len(mtp)} tensors of multi-token-prediction layers (model.layers.{num_layers}.*) are not "
              f"converted: the trainer's model has no MTP layers", file=sys.stderr)


def _check_shapes(reader: Any, rules: Sequence[Any], shapes: Mapping[str, tuple[int, ...]], hf: Path) -> None:
    """Each Hugging Face tensor has the shape the experiment's model gives it (the config may not say all)."""
    import torch

    wrong = []
    for rule in rules:
        expected = rule.split(torch.empty(shapes[rule.mcore], device="meta"))
        for name, want in zip(rule.hf, expected):
            have = tuple(reader.shape(name))
            if have != tuple(want.shape):
                wrong.append(f"{name} is {have}, the experiment's model needs {tuple(want.shape)}")
    if wrong:
        raise ConversionError(f"{hf}: " + "; ".join(wrong[:6]) + (f" and {len(wrong) - 6} more" if len(wrong) > 6
                                                                   else ""))


def _checkpoint_folder(ckpt: Path) -> Path:
    from primus_runtime.trainer.checkpoint import iteration_dir, read_tracker
    from primus_runtime.trainer.options import TRACKER_FILE

    if (ckpt / TRACKER_FILE).is_file():
        iteration = read_tracker(ckpt)
        assert iteration is not None
        return iteration_dir(ckpt, iteration)
    if (ckpt / ".metadata").is_file() or ckpt.name.startswith("iter_"):
        return ckpt
    raise ConversionError(f"--ckpt {ckpt}: neither a save folder ({TRACKER_FILE}) nor an iter_* checkpoint")


def mcore_to_hf(ckpt: Path, params: Mapping[str, Any], out: Path, *, max_shard_bytes: int = 5 * 10**9,
                quiet: bool = False) -> None:
    """Write the trainer checkpoint ``ckpt`` as a Hugging Face folder ``out`` (config.json + sharded safetensors)."""
    import torch
    from torch.distributed.checkpoint.api import CheckpointException

    from primus_runtime.convert import dcp_io, families, hf_io
    from primus_runtime.trainer.checkpoint import _cause, verify_files

    folder = _checkpoint_folder(ckpt)
    verify_files(folder)
    family, layout, rules = _model(params)
    stored = dcp_io.stored_tensors(folder)
    dcp_io.check_keys(layout, stored, folder)
    rule_of: dict[str, Any] = {}
    sizes: list[tuple[str, int]] = []
    dtype = stored[layout.pieces[0].key].properties.dtype
    for rule in rules:
        rule_dtype = stored[layout.pieces_of(rule.mcore)[0].key].properties.dtype
        meta = torch.empty(layout.shapes[rule.mcore], device="meta", dtype=rule_dtype)
        for name, tensor in zip(rule.hf, rule.split(meta)):
            rule_of[name] = rule
            sizes.append((name, tensor.numel() * tensor.element_size()))

    rule_of_param = {rule.mcore: rule for rule in rules}

    def produce(names: list[str]) -> dict[str, Any]:
        needed = list(dict.fromkeys(rule_of[n].mcore for n in names))
        try:
            read = dcp_io.read_params(folder, layout, needed, stored)
        except (Exception, CheckpointException) as exc:  # torch wraps a reader's error in a BaseException
            raise ConversionError(f"cannot read {folder}: {_cause(exc)}") from None
        tensors: dict[str, Any] = {}
        for mcore in needed:
            rule = rule_of_param[mcore]
            tensors.update(zip(rule.hf, rule.split(read.pop(mcore))))
        return {n: tensors[n] for n in names}

    shards = hf_io.shard_plan(sizes, max_shard_bytes)
    config = families.build_hf_config(params, family, str(dtype).removeprefix("torch."))
    with atomic_folder(out) as staging, _progress(len(sizes), "mcore-to-hf", quiet) as bar:
        hf_io.write(staging, shards, produce, bar.update)
        config.save_pretrained(str(staging))
    print(f"converted {folder} ({family}, {len(sizes)} tensors in {len(shards)} shards) to {out}")
