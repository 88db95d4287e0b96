"""How much the int8 student loses against fp32: per-volume 3D Dice of both against the labels, and of
int8 against fp32, through ``configs/inference.json`` (ONNX Runtime fp32, then int8).

    python -m bundle.serving.int8_parity --ckpt demo_out/models/model.pt --datalist demo_out/datalist.json \
        --split test --calibration bundle/data/fixtures/example_ct.nii.gz

The int8 model is calibrated on ``--calibration`` (real CT, never the evaluated volumes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from ..workflows import config_dir, located


def dice(a, b) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def segment(images: list[str], ckpt: Path, onnx_path: Path, out_dir: Path, slice_size: int) -> None:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=located("inference"), workflow_type="infer",
                              meta_file=str(config_dir() / "metadata.json"), logging_file=False, input_files=images,
                              ckpt_path=str(ckpt), onnx_path=str(onnx_path), output_dir=str(out_dir),
                              slice_size=slice_size, backend="onnx")
    workflow.initialize()
    workflow.run()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--datalist", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--slice_size", type=int, default=256)
    parser.add_argument("--calibration", nargs="+", required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import nibabel as nib
    import numpy as np

    from .quantize import calibration_slices, quantize_int8

    datalist = json.loads(args.datalist.read_text())
    if args.split not in datalist:
        raise SystemExit(f"datalist '{args.datalist}' has no split '{args.split}' (it has {sorted(datalist)}).")
    cases = datalist[args.split]
    label_value = datalist.get("params", {}).get("label_value", 1)
    images = [case["image"] for case in cases]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        segment(images, args.ckpt, tmp / "model.onnx", tmp / "fp32", args.slice_size)
        quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx",
                      calibration_slices(args.calibration, slice_size=args.slice_size))
        segment(images, args.ckpt, tmp / "model.int8.onnx", tmp / "int8", args.slice_size)
        rows = []
        for case in cases:
            name = Path(case["image"]).name.split(".nii")[0] + "_seg.nii.gz"
            label = np.asarray(nib.load(case["label"]).dataobj) == label_value
            fp32 = np.asarray(nib.load(tmp / "fp32" / name).dataobj) > 0
            int8 = np.asarray(nib.load(tmp / "int8" / name).dataobj) > 0
            rows.append({"image": case["image"], "dice_fp32": dice(fp32, label), "dice_int8": dice(int8, label),
                         "dice_int8_vs_fp32": dice(int8, fp32)})
    summary = {key: statistics.mean(r[key] for r in rows) for key in ("dice_fp32", "dice_int8", "dice_int8_vs_fp32")}
    report = {"ckpt": str(args.ckpt), "split": args.split, "volumes": rows, "mean": summary,
              "drop": summary["dice_fp32"] - summary["dice_int8"]}
    for r in rows:
        print(f"{Path(r['image']).name}: fp32 {r['dice_fp32']:.4f}  int8 {r['dice_int8']:.4f}  "
              f"int8 vs fp32 {r['dice_int8_vs_fp32']:.4f}")
    print(f"mean: fp32 {summary['dice_fp32']:.4f}, int8 {summary['dice_int8']:.4f} (drop {report['drop']:.4f}), "
          f"int8 vs fp32 {summary['dice_int8_vs_fp32']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
