"""Per-volume 3D Dice of trained models on the real labelled CT fixtures (transfer to real scans).

    python scripts/evaluate_real.py --out demo_out      # the demo's teacher, baseline and KD student

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
                   cases: dict[str, tuple[Path, Path]] = REAL_CASES, label_value: int = 1) -> dict[str, dict]:
    """``{subject: {"dice": ..., "dice_largest_component": ..., "label_voxels": ..., "predicted_voxels": ...}}``
    for a network config (``network_def``) with weights at ``ckpt_path``, or a ready ``torch.nn.Module``."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd, KeepLargestConnectedComponent,
                                  LoadImaged, ResampleToMatchd)

    from bundle.checkpoint import load_weights

    parser = ConfigParser()
    parser.read_config(config_files)
    image_preprocessing = Compose(parser.get_parsed_content("image_preprocessing"))
    inferer = parser.get_parsed_content("inferer")
    if isinstance(network_def, torch.nn.Module):
        network = network_def.eval()
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
        results[name] = {"subjects": per_subject,
                         "mean_dice": round(sum(r["dice"] for r in per_subject.values()) / len(per_subject), 4),
                         "mean_dice_largest_component": round(
                             sum(r["dice_largest_component"] for r in per_subject.values()) / len(per_subject), 4)}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a finished scripts/demo.py output folder")
    parser.add_argument("--config", action="append", default=[], help="the extra configs the demo was run with")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    results = evaluate_demo(out, args.config)
    (out / "real_ct.json").write_text(json.dumps(results, indent=2))
    for name, entry in results.items():
        subjects = " | ".join(f"{s} {r['dice']:.3f}" for s, r in entry["subjects"].items())
        print(f"{name}: mean Dice {entry['mean_dice']:.3f} ({subjects}); largest component "
              f"{entry['mean_dice_largest_component']:.3f}")
    return results


if __name__ == "__main__":
    main()
