"""The offline end-to-end demo: synthetic CT -> teacher -> baseline student -> KD student -> evaluation -> report.

    python scripts/demo.py --out demo_out                  # synthetic CT from real anatomy (docs/synthetic.md)
    python scripts/demo.py --out demo_out --data phantoms  # the fast procedural phantoms instead

Every stage runs the real bundle configs (``configs/*.json`` with the ``configs/demo.json``
override) in this process and leaves a marker in ``OUT/stages/``; a rerun skips finished stages.
If a Task09_Spleen folder (``dataset.json`` inside) is at ``--dataset_dir``, it is used instead of
generated data. Where the real CT fixtures are at hand (``../shared/data/totalseg_ct``), the three
models are also scored on them (``scripts/evaluate_real.py``): transfer to scans never trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from evaluate_real import REAL_CASES, evaluate_demo

from bundle.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
STAGES = ("teacher", "student", "kd")  # also the run names, hence models/<stage>/ and eval/<stage>/
CONFIGS = {"teacher": [str(CONFIG_DIR / "train.json"), str(CONFIG_DIR / "teacher.json")],
           "student": [str(CONFIG_DIR / "train.json")],
           "kd": [str(CONFIG_DIR / "train.json"), str(CONFIG_DIR / "kd.json")]}
DEMO = str(CONFIG_DIR / "demo.json")
EVALUATED = {"teacher": "teacher", "student": "student", "kd_student": "kd"}


def _config_files(name: str, extra: list[str], evaluate: bool = False) -> list[str]:
    return [*CONFIGS[name], *([str(CONFIG_DIR / "evaluate.json")] if evaluate else []), DEMO, *extra]


def best_model(out: Path, stage: str) -> Path:
    """A stage's best checkpoint (``ckpt_dir`` of its run)."""
    return out / "models" / stage / "model.pt"


def _marker(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.json"


def _run_stage(out: Path, stage: str, fn, log) -> dict:
    marker = _marker(out, stage)
    if marker.exists():
        log(f"[{stage}] already done ({marker}), reusing it")
        return json.loads(marker.read_text())
    log(f"[{stage}] running ...")
    start = time.perf_counter()
    result = fn() or {}
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(marker, json.dumps(result, indent=2))
    log(f"[{stage}] done in {result['seconds']} s")
    return result


def _bundle_run(run_id: str, config_files: list[str], **overrides) -> None:
    from monai.bundle import run

    run(run_id=run_id, config_file=config_files, meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"), **overrides)


def _network_def(stage: str, extra: list[str]) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_config_files(stage, extra))
    return parser.get("teacher_def" if stage == "teacher" else "student_def")


def _evaluate(out: Path, name: str, extra: list[str], common: dict) -> dict:
    stage = EVALUATED[name]
    _bundle_run("evaluating", _config_files(stage, extra, evaluate=True), **common, split="test",
                outputs=["seg", "rec"] if stage == "teacher" else ["seg"])
    return json.loads((out / "eval" / stage / "test" / "summary.json").read_text())


def _figures(out: Path, extra: list[str], common: dict, slices: int = 4) -> list[Path]:
    """Overlay grid of test slices (largest spleen area per volume) and the training curves."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from bundle.checkpoint import load_weights
    from bundle.report import overlay_grid, training_curves

    parser = ConfigParser()
    parser.read_config(_config_files("teacher", extra))
    parser.update({k: v for k, v in common.items()})
    transform = parser.get_parsed_content("preprocessing_3d")
    cases = parser.get_parsed_content("datalist")["test"][:slices]
    preprocess = Compose(transform)
    images, labels = [], []
    for case in cases:
        data = preprocess(dict(case))
        z = int(data["label"][0].sum(dim=(0, 1)).argmax())
        images.append(data["image"][0, :, :, z].numpy())
        labels.append(data["label"][0, :, :, z].numpy())
    columns = {"ground truth": labels}
    batch = torch.as_tensor(np.stack(images))[:, None].float()
    for title, stage in (("baseline student", "student"), ("KD student", "kd"), ("teacher", "teacher")):
        network = ConfigParser({"net": _network_def(stage, extra)}).get_parsed_content("net")
        network = load_weights(network, best_model(out, stage)).eval()
        with torch.no_grad():
            columns[title] = list((torch.sigmoid(network(batch)) > 0.5).float()[:, 0].numpy())
    figures = [overlay_grid(images, columns, out / "overlays.png", "test slices with the largest spleen area")]
    figures.append(training_curves({s: out / "eval" / s for s in STAGES}, out / "training_curves.png"))
    return figures


def _real_ct_section(summary: dict) -> str:
    """Markdown table of the per-volume Dice on the real CT fixtures, if they were scored."""
    from bundle.report import markdown_table

    if "real_ct" not in summary:
        return ""
    subjects = list(summary["real_ct"]["teacher"]["subjects"])
    rows = [[name] + [f"{entry['subjects'][s]['dice']:.4f}" for s in subjects]
            + [f"{entry['mean_dice']:.4f}", f"{entry['mean_dice_largest_component']:.4f}"]
            for name, entry in summary["real_ct"].items()]
    table = markdown_table(["model", *subjects, "mean", "mean, largest component"], rows)
    return ("Transfer to real CT never trained on (per-volume 3D Dice; label maps resampled onto the image grid, "
            f"scripts/evaluate_real.py):\n\n{table}\n\n")


def _report(out: Path, summary: dict, data_note: str) -> None:
    from bundle.report import markdown_table

    metrics = ("dice", "iou", "precision", "recall", "surface_dice", "hd95_mm")
    rows = []
    for name in ("teacher", "student", "kd_student"):
        entry = summary[name]
        rows.append([name, entry["params"], f"{entry['flops_per_slice'] / 1e6:.1f}"]
                    + [f"{entry['metrics'][m]['mean']:.4f} ± {entry['metrics'][m]['std']:.4f}" for m in metrics])
    table = markdown_table(["model", "params", "MFLOPs/slice"] + list(metrics), rows)
    gain = summary["kd_student"]["dice"] - summary["student"]["dice"]
    text = (f"# spleen-kd demo report\n\n{data_note}\n\nPer-volume 3D metrics on the test split "
            f"({summary['teacher']['volumes']} volumes; mean ± std; distances in mm).\n\n{table}\n\n"
            f"KD gain over the baseline student: {gain:+.4f} Dice.\n\n{_real_ct_section(summary)}"
            "![overlays](overlays.png)\n\n![training curves](training_curves.png)\n")
    (out / "report.md").write_text(text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (reruns reuse its finished stages)")
    parser.add_argument("--dataset_dir", default=str(ROOT / "data" / "Task09_Spleen"),
                        help="use this Task09_Spleen folder if it holds dataset.json; else generate data (--data)")
    parser.add_argument("--data", choices=["synthetic", "phantoms"], default="synthetic",
                        help="offline training data: synthetic CT from real label maps, or procedural phantoms")
    parser.add_argument("--cases", type=int, default=16, help="volumes to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", action="append", default=[],
                        help="extra override config merged after configs/demo.json (repeatable)")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO)
    log = print

    msd = Path(args.dataset_dir) / "dataset.json"
    if msd.is_file():
        dataset_dir = str(Path(args.dataset_dir).resolve())
        data_note = f"Data: the Task09_Spleen folder at {dataset_dir} (real CT)."
    elif args.data == "synthetic":
        from bundle.data.synthetic import make_synthetic_dataset

        dataset_dir = str(out / "synthetic")
        if not (out / "synthetic" / "dataset.json").is_file():
            make_synthetic_dataset(dataset_dir, cases=args.cases, seed=args.seed)
        data_note = (f"Data: {args.cases} synthetic CT volumes (seed {args.seed}) generated from real label maps "
                     f"(TotalSegmentator subjects s0001, s0004, s0006) in {dataset_dir}.")
    else:
        from bundle.data.phantoms import make_phantom_dataset

        dataset_dir = str(out / "phantoms")
        if not (out / "phantoms" / "dataset.json").is_file():
            make_phantom_dataset(dataset_dir, cases=args.cases, seed=args.seed)
        data_note = f"Data: {args.cases} procedural phantom volumes (seed {args.seed}) in {dataset_dir}."
    log(data_note)
    common = {"bundle_root": str(ROOT), "output_root": str(out), "dataset_dir": dataset_dir, "seed": args.seed,
              "datalist_file": str(out / "datalist.json")}

    for stage in STAGES:
        _run_stage(out, stage, lambda s=stage: _bundle_run("training", _config_files(s, args.config), **common), log)
    summary = {}
    for name in EVALUATED:
        result = _run_stage(out, f"evaluate_{name}", lambda n=name: _evaluate(out, n, args.config, common), log)
        summary[name] = {"dice": result["metrics"]["dice"]["mean"], "params": result["params"],
                         "flops_per_slice": result["flops_per_slice"], "volumes": result["volumes"],
                         "metrics": result["metrics"]}
    summary["data"] = data_note
    if all(image.exists() and label.exists() for image, label in REAL_CASES.values()):
        summary["real_ct"] = _run_stage(out, "evaluate_real_ct", lambda: evaluate_demo(out, args.config), log)
        summary["real_ct"].pop("seconds", None)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _figures(out, args.config, common)
    _report(out, summary, data_note)
    log(f"teacher Dice {summary['teacher']['dice']:.4f} | baseline student {summary['student']['dice']:.4f} | "
        f"KD student {summary['kd_student']['dice']:.4f}  -> {out / 'report.md'}")
    if "real_ct" in summary:
        log("real CT (mean Dice of the two fixtures): " + " | ".join(
            f"{name} {entry['mean_dice']:.4f}" for name, entry in summary["real_ct"].items()))
    return summary


if __name__ == "__main__":
    main()
