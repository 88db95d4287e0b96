"""The ``train``, ``evaluate`` and ``export`` commands: thin layers over the bundle configs."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def overrides_from(extra: list[str], parser: argparse.ArgumentParser) -> dict:
    """``--key value`` / ``--key=value`` pairs left over by argparse, as ``monai.bundle run`` takes them
    (values read as Python literals where they are, strings otherwise; ``train#trainer#max_epochs`` works)."""
    overrides, items = {}, list(extra)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or len(item) <= 2:
            parser.error(f"unexpected argument '{item}': config overrides are --key value pairs")
        key, _, value = item[2:].partition("=")
        if not _:
            if not items:
                parser.error(f"config override --{key} has no value")
            value = items.pop(0)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def train(argv: list[str]) -> int:
    """Train a workflow with the bundle configs, as ``python -m monai.bundle run training`` does."""
    from .workflows import TRAINABLE, bundle_run, config_files

    parser = argparse.ArgumentParser(prog="spleen-kd train", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Train a workflow: train.json, its override (teacher.json, kd.json) "
                                     "and any --config, merged in that order.", epilog="""examples:
  spleen-kd train teacher --config pretrained --out runs/mine --dataset_dir data/Task09_Spleen
  spleen-kd train kd --config pretrained --out runs/mine --dataset_dir data/Task09_Spleen \\
      --teacher_ckpt models/teacher/model.pt
  spleen-kd train student --config demo --out runs/small --dataset_dir data/phantoms --epochs 5
  spleen-kd train teacher_3d --out runs/mine --dataset_dir data/Task09_Spleen    # -> runs/mine/bundles/teacher_3d
Any other --key value is a config override (e.g. --seed 1, --distill "['cwd','dist']", --resume true).""")
    parser.add_argument("workflow", choices=TRAINABLE)
    parser.add_argument("--config", action="append", default=[], help="override config merged last (a name in "
                        "configs/ such as pretrained, demo, mlflow, or a path; repeatable)")
    parser.add_argument("--out", required=True, help="output_root: models/, eval/ and the datalist go there")
    args, extra = parser.parse_known_args(argv)
    overrides = {"output_root": str(Path(args.out).resolve()), **overrides_from(extra, parser)}
    bundle_run("training", config_files(args.workflow, *args.config), **overrides)
    return 0


def _evaluate_real(args) -> dict:
    from .evaluation import evaluate_checkpoint, evaluate_demo, evaluate_grid, report, summarised
    from .workflows import shipped_checkpoints

    if args.demo:
        results = evaluate_demo(Path(args.demo), ["pretrained", "demo_pretrained", *args.config])
    elif args.grid:
        results = evaluate_grid(Path(args.grid))
    else:
        checkpoints = [Path(c) for c in args.ckpt] or [c for c in shipped_checkpoints() if c.is_file()]
        results = {}
        for ckpt in checkpoints:
            if not ckpt.is_file():
                raise SystemExit(f"error: checkpoint '{ckpt}' does not exist.")
            results[str(ckpt)] = summarised(evaluate_checkpoint(ckpt, args.config))
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def evaluate(argv: list[str]) -> int:
    """Test-split metrics of a workflow's best model, or Dice on the real CT fixtures."""
    from .workflows import TRAINABLE, bundle_run, config_files

    parser = argparse.ArgumentParser(prog="spleen-kd evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Per-volume 3D metrics (Dice, IoU, precision, recall, surface Dice, "
                                     "HD95) of a workflow's best model on a split (configs/evaluate.json), or "
                                     "(--real) per-volume Dice on the two real CT fixtures, never trained on.",
                                     epilog="""examples:
  spleen-kd evaluate kd --config pretrained --out runs/mine            # runs/mine/eval/kd/test/
  spleen-kd evaluate --real                                            # the shipped models in models/
  spleen-kd evaluate --real --ckpt runs/mine/models/kd/model.pt        # needs the model.json beside it
  spleen-kd evaluate --real --demo demo_out                            # a demo's three models
  spleen-kd evaluate --real --grid runs/proof                          # every run of an experiment grid""")
    parser.add_argument("workflow", nargs="?", choices=TRAINABLE)
    parser.add_argument("--config", action="append", default=[], help="the override configs the run was trained with")
    parser.add_argument("--out", help="the run's output_root")
    parser.add_argument("--split", default="test", choices=["test", "validation", "teacher_train", "student_train"])
    parser.add_argument("--real", action="store_true", help="Dice on the real CT fixtures instead")
    parser.add_argument("--ckpt", action="append", default=[], help="with --real: checkpoints with their model.json "
                        "(default: models/model.pt, models/s1/model.pt, models/teacher/model.pt)")
    parser.add_argument("--demo", help="with --real: a `spleen-kd demo` output folder")
    parser.add_argument("--grid", help="with --real: a `spleen-kd grid` output folder")
    parser.add_argument("--json", help="with --real: also write the results to this JSON file")
    args, extra = parser.parse_known_args(argv)
    if args.real:
        _evaluate_real(args)
        return 0
    if not args.workflow or not args.out:
        parser.error("give a workflow and --out (or --real)")
    overrides = {"output_root": str(Path(args.out).resolve()), "split": args.split,
                 "outputs": ["seg", "rec"] if args.workflow == "teacher" else ["seg"], **overrides_from(extra, parser)}
    bundle_run("evaluating", config_files(args.workflow, *args.config, evaluate=True), **overrides)
    print((Path(args.out) / "eval" / overrides.get("run_name", args.workflow) / args.split / "summary.json").read_text())
    return 0


def export(argv: list[str]) -> int:
    """ONNX model of a described checkpoint, for ONNX Runtime and the light serving path."""
    parser = argparse.ArgumentParser(prog="spleen-kd export", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Export a checkpoint to ONNX (dynamic batch axis, tagged with its "
                                     "weights), beside it by default: what configs/inference.json and "
                                     "`spleen-kd segment` serve. The network and slice size come from the model.json "
                                     "beside the checkpoint (written when a run publishes it).", epilog="""examples:
  spleen-kd export --ckpt models/model.pt                 # -> models/model.onnx
  spleen-kd export --ckpt runs/mine/models/model.pt --onnx runs/mine/model.onnx
TorchScript: python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \\
  --meta_file configs/metadata.json --config_file configs/inference.json --use_trace True --input_shape "[1, 1, 128, 128]\"""")
    parser.add_argument("--ckpt", required=True, help="a checkpoint with its model.json")
    parser.add_argument("--onnx", help="where to write the ONNX model (default: beside the checkpoint, .onnx)")
    args = parser.parse_args(argv)

    from .checkpoint import load_weights
    from .networks import from_definition
    from .serving import model_info
    from .serving.backend import export_onnx

    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        sys.exit(f"error: checkpoint '{ckpt}' does not exist.")
    info = model_info.read(ckpt)
    network = load_weights(from_definition(info["network_def"]), ckpt)
    path = export_onnx(network, args.onnx or ckpt.with_suffix(".onnx"), info["slice_size"], description=info)
    print(f"wrote {path} ({info['network_def']['_target_'].rsplit('.', 1)[-1]}, {info['slice_size']}² slices)")
    return 0
