"""Measure per-structure Hounsfield-unit statistics on real labelled CT; the synthetic CT generator reads them.

    spleen-kd measure-hu --out bundle/data/hu_stats.json

By default the scans are the two TotalSegmentator dataset CTs without a spleen in view
(``sources/totalseg/s0002``, ``s0003``): the non-enhancing tissues (fat, muscle, bone, lung, air) come
from them, the enhancing organs from the contrast-phase table (``contrast_phases.json``), and nothing
is measured on the real CT fixtures that transfer is scored on.

For every structure of every (CT, label map) pair: the median and the robust spread (IQR / 1.349) of
the HU inside the structure, eroded by one voxel so that partial volume at its border does not widen
the spread. Unlabelled tissue inside the body is split into fat (-250…-30 HU) and soft tissue
(-30…150 HU). Each subject is reported on its own and pooled (median of the subject medians; the
spread is the larger of the median within-subject spread and the spread between subjects).
Label maps load onto the CT's grid with nearest-neighbour resampling, so a DICOM series and a LAS
label map pair up correctly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from .assets import HU_REFERENCE_SCANS, HU_STATS_FILE

MIN_VOXELS = 50  # fewer eroded voxels than this give no reliable median for a structure
UNLABELLED_RANGES = {"fat": (-250.0, -30.0), "soft_tissue": (-30.0, 150.0)}


def _robust(values: np.ndarray) -> dict:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": round(float(median), 1), "spread": round(float((q3 - q1) / 1.349), 1), "voxels": int(values.size)}


def measure_subject(ct_path: Path, label_path: Path, names: dict[int, str]) -> dict[str, dict]:
    """Robust HU statistics per named structure of one CT (see the module docstring)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ResampleToMatchd

    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                    ResampleToMatchd("label", "image", mode="nearest")])
    data = load({"image": str(ct_path), "label": str(label_path)})
    image = np.asarray(data["image"][0], dtype=np.float32)
    label = np.asarray(data["label"][0]).round().astype(np.int32)
    stats = {}
    for value in np.unique(label):
        if value == 0 or int(value) not in names:
            continue
        core = ndimage.binary_erosion(label == value)
        if core.sum() >= MIN_VOXELS:
            stats[names[int(value)]] = _robust(image[core])
    body = ndimage.binary_fill_holes(ndimage.binary_opening(image > -500, iterations=2))
    unlabelled = ndimage.binary_erosion(body, iterations=3) & (label == 0)
    values = image[unlabelled]
    for name, (low, high) in UNLABELLED_RANGES.items():
        inside = values[(values >= low) & (values < high)]
        if inside.size >= MIN_VOXELS:
            stats[f"unlabelled_{name}"] = _robust(inside) | {"fraction": round(inside.size / max(values.size, 1), 3)}
    return stats


def pool(subjects: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Per structure across subjects: median of medians; spread = max(median within, between-subject spread)."""
    pooled = {}
    for name in sorted({n for stats in subjects.values() for n in stats}):
        entries = [stats[name] for stats in subjects.values() if name in stats]
        medians = np.array([e["median"] for e in entries])
        within = float(np.median([e["spread"] for e in entries]))
        between = float(medians.std(ddof=1)) if len(medians) > 1 else 0.0
        pooled[name] = {"median": round(float(np.median(medians)), 1), "spread": round(max(within, between), 1),
                        "subjects": [s for s, stats in subjects.items() if name in stats]}
    return pooled


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HU_STATS_FILE), help="JSON to write")
    args = parser.parse_args(argv)

    from ..files import atomic_write_text
    from .synthetic import label_names

    subjects = {}
    for subject, ct, label in HU_REFERENCE_SCANS:
        for path in (ct, label):
            if not path.exists():
                sys.exit(f"error: '{path}' is missing; the package data is incomplete (reinstall spleen-kd).")
        subjects[subject] = measure_subject(ct, label, label_names("dataset"))
        print(f"{subject}: {len(subjects[subject])} structures"
              + "".join(f", {n} {subjects[subject][n]['median']:+.0f} HU" for n in ("spleen", "liver")
                        if n in subjects[subject]))
    result = {"description": "robust HU statistics per structure (median, IQR/1.349) measured by "
                             "spleen-kd measure-hu on real CT without a spleen in view (TotalSegmentator dataset s0002, s0003) "
                             "with their label maps; enhancing organs: contrast_phases.json",
              "subjects": subjects, "pooled": pool(subjects)}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}: {len(result['pooled'])} structures")
    return result


if __name__ == "__main__":
    main()
