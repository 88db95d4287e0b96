"""Per-volume 3D Dice of trained models on the real labelled CT fixtures (transfer to real scans).

    python scripts/evaluate_real.py --out demo_out      # the demo's teacher, baseline and KD student
    python scripts/evaluate_real.py --grid runs/proof   # every trained run of scripts/experiments.py's grid

Prediction follows ``configs/evaluate.json`` (its image preprocessing, ``SliceInferer``, sigmoid,
inversion to the image grid, threshold 0.5, no post-processing). The label map is resampled onto the
image's grid with nearest neighbour, so a DICOM series and a LAS label map pair up correctly. Dice is
also given after keeping the largest connected component, as ``configs/inference.json`` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOTALSEG_CT = ROOT.parent / "shared" / "data" / "totalseg_ct"
REAL_CASES = {  # subject: (image, label map; spleen = 1)
    "example_ct_sm": (TOTALSEG_CT / "example_ct_sm.nii.gz", TOTALSEG_CT / "example_seg.nii.gz"),
    "example_ct_dicom": (TOTALSEG_CT / "example_ct_dicom", TOTALSEG_CT / "example_seg_dicom.nii.gz"),
}


def dice(prediction, label) -> float:
    """Dice of two binary volumes; 1.0 when both are empty."""
    total = prediction.sum() + label.sum()
    return 1.0 if total == 0 else float(2.0 * (prediction & label).sum() / total)


def evaluate_model(network_def, ckpt_path: str | Path | None, config_files: list[str],
                   cases: dict[str, tuple[Path, Path]] = REAL_CASES, label_value: int = 1,
                   overrides: dict | None = None) -> dict[str, dict]:
    """``{subject: {"dice": ..., "dice_largest_component": ..., "label_voxels": ..., "predicted_voxels": ...}}``
    for a network config (``network_def``; None: the configs' own) with weights at ``ckpt_path``, or a ready
    ``torch.nn.Module``; ``overrides`` are applied to the merged configs, as ``monai.bundle run`` would."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd, KeepLargestConnectedComponent,
                                  LoadImaged, ResampleToMatchd)

    from bundle.checkpoint import load_weights

    parser = ConfigParser()
    parser.read_config(config_files)
    parser.update(overrides or {})
    image_preprocessing = Compose(parser.get_parsed_content("image_preprocessing"))
    inferer = parser.get_parsed_content("inferer")
    if isinstance(network_def, torch.nn.Module):
        network = network_def.eval()
    elif network_def is None:
        network = load_weights(parser.get_parsed_content("network_def"), ckpt_path).eval()
    else:
        network = load_weights(ConfigParser({"net": network_def}).get_parsed_content("net"), ckpt_path).eval()
    to_image_grid = Compose([Invertd("pred", image_preprocessing, orig_keys="image", nearest_interp=False),
                             AsDiscreted("pred", threshold=0.5)])
    load_reference = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                              ResampleToMatchd("label", "image", mode="nearest")])
    results = {}
    for subject, (image_path, label_path) in cases.items():
        for path in (image_path, label_path):
            if not Path(path).exists():
                raise FileNotFoundError(f"real CT fixture '{path}' is missing; see ../shared/data/README.md.")
        data = image_preprocessing({"image": str(image_path)})
        with torch.no_grad():
            outputs = inferer(data["image"][None], network)
        logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        data["pred"] = torch.sigmoid(logits[0])
        prediction = np.asarray(to_image_grid(data)["pred"][0]) > 0
        label = np.asarray(load_reference({"image": str(image_path), "label": str(label_path)})["label"][0])
        label = np.round(label) == label_value
        if prediction.shape != label.shape:
            raise RuntimeError(f"{subject}: prediction {prediction.shape} and label {label.shape} differ in shape")
        largest = np.asarray(KeepLargestConnectedComponent()(torch.as_tensor(prediction[None])))[0] > 0
        results[subject] = {"dice": round(dice(prediction, label), 4),
                            "dice_largest_component": round(dice(largest, label), 4),
                            "label_voxels": int(label.sum()), "predicted_voxels": int(prediction.sum())}
    return results


def evaluate_demo(out: Path, extra_configs: list[str] = ()) -> dict[str, dict]:
    """The three models of a ``scripts/demo.py`` run (``out``) on the real fixtures."""
    from demo import EVALUATED, _config_files, _network_def, best_model

    results = {}
    for name, stage in EVALUATED.items():
        config_files = _config_files(stage, list(extra_configs), evaluate=True)
        per_subject = evaluate_model(_network_def(stage, list(extra_configs)), best_model(out, stage), config_files)
        results[name] = _summarised(per_subject)
    return results


def _summarised(per_subject: dict) -> dict:
    return {"subjects": per_subject,
            "mean_dice": round(sum(r["dice"] for r in per_subject.values()) / len(per_subject), 4),
            "mean_dice_largest_component": round(
                sum(r["dice_largest_component"] for r in per_subject.values()) / len(per_subject), 4)}


def evaluate_grid(out: Path) -> dict[str, dict]:
    """Every trained run of a ``scripts/experiments.py`` output folder, with the configs and overrides its
    training used (``OUT/stages/<run>/train.json``) and its best checkpoint (``OUT/models/<run>/model.pt``)."""
    evaluate = str(ROOT / "configs" / "evaluate.json")
    results = {}
    for marker in sorted(Path(out).glob("stages/*/train.json")):
        run, trained = marker.parent.name, json.loads(marker.read_text())
        ckpt = Path(out) / "models" / run / "model.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{marker} says '{run}' was trained, but {ckpt} is missing.")
        per_subject = evaluate_model(None, ckpt, [*trained["config_files"], evaluate],
                                     overrides=trained["overrides"])
        results[run] = _summarised(per_subject)
        print(f"{run}: mean Dice {results[run]['mean_dice']:.3f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--out", help="a finished scripts/demo.py output folder")
    source.add_argument("--grid", help="a scripts/experiments.py output folder: every trained run in it")
    parser.add_argument("--config", action="append", default=[], help="the extra configs the demo was run with")
    args = parser.parse_args(argv)

    out = Path(args.out or args.grid).resolve()
    results = evaluate_grid(out) if args.grid else evaluate_demo(out, args.config)
    (out / "real_ct.json").write_text(json.dumps(results, indent=2))
    for name, entry in results.items():
        subjects = " | ".join(f"{s} {r['dice']:.3f}" for s, r in entry["subjects"].items())
        print(f"{name}: mean Dice {entry['mean_dice']:.3f} ({subjects}); largest component "
              f"{entry['mean_dice_largest_component']:.3f}")
    return results


if __name__ == "__main__":
    main()
