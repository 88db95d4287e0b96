"""Write an MSD Task09_Spleen-layout dataset of synthetic CT (HU) generated from real label maps.

    python scripts/make_synthetic.py --out data/synthetic --cases 16 --seed 0

By default the anatomy comes from the three TotalSegmentator dataset subjects with a spleen
(../shared/data/totalseg_dataset/s0001, s0004, s0006), never from the maps of the real CTs that
transfer is measured on. See docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path



def main(argv: list[str] | None = None) -> Path:
    from bundle.data.synthetic import DEFAULT_SOURCES, HU_STATS_FILE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (imagesTr/, labelsTr/, dataset.json)")
    parser.add_argument("--cases", type=int, default=16, help="number of volumes (sources are used in turn)")
    parser.add_argument("--seed", type=int, default=0, help="same seed and sources, same files")
    parser.add_argument("--sources", nargs="+", default=[str(s) for s in DEFAULT_SOURCES],
                        help="label maps with TotalSegmentator structures (1 = spleen)")
    parser.add_argument("--naming", choices=["dataset", "totalsegmentator"], default="dataset",
                        help="value order of the sources: 'dataset' (totalseg_dataset/labels.json) or "
                             "'totalsegmentator' (the maps TotalSegmentator writes)")
    parser.add_argument("--hu_stats", default=str(HU_STATS_FILE), help="from scripts/measure_hu_stats.py")
    parser.add_argument("--inplane_spacing", type=float, nargs=2, default=[0.6, 3.0], metavar=("MIN", "MAX"),
                        help="in-plane pixel size range in mm")
    parser.add_argument("--slice_thickness", type=float, nargs=2, default=[1.0, 5.0], metavar=("MIN", "MAX"),
                        help="slice thickness range in mm")
    parser.add_argument("--max_slices", type=int, default=48, help="upper bound on slices per volume")
    parser.add_argument("--figure", help="also draw synthetic slices beside the real CT fixtures to this PNG")
    args = parser.parse_args(argv)

    from bundle.data.datalist import DataError
    from bundle.data.synthetic import make_synthetic_dataset

    start = time.perf_counter()
    try:
        path = make_synthetic_dataset(args.out, args.cases, args.seed, args.sources, args.naming, args.hu_stats,
                                      inplane_spacing_mm=args.inplane_spacing,
                                      slice_thickness_mm=args.slice_thickness, max_slices=args.max_slices)
    except (DataError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.cases} synthetic CT volumes and {path} in {time.perf_counter() - start:.1f} s")
    if args.figure:
        print(f"wrote {draw_comparison(Path(args.out), Path(args.figure))}")
    return path


def _spleen_slice(image_path: str, label_path: str) -> tuple:
    """The axial slice with the most spleen, in RAS with the label on the image grid."""
    import numpy as np
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ResampleToMatchd

    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                    ResampleToMatchd("label", "image", mode="nearest"), Orientationd(["image", "label"], "RAS")])
    data = load({"image": image_path, "label": label_path})
    image, label = np.asarray(data["image"][0]), np.asarray(data["label"][0]).round() == 1
    z = int(label.sum(axis=(0, 1)).argmax())
    spacing = [float(s) for s in data["image"].pixdim[:2]]
    return image[:, :, z], label[:, :, z], spacing


def draw_comparison(synthetic_dir: Path, figure: Path, columns: int = 4,
                    window: tuple[float, float] = (-160.0, 240.0)) -> Path:
    """Real CT slices (top row) and synthetic ones (bottom row), the same HU window, spleen outlined."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bundle.data.synthetic import SHARED_DATA

    real = SHARED_DATA / "totalseg_ct"
    rows = {"real CT": [(str(real / "example_ct_sm.nii.gz"), str(real / "example_seg.nii.gz"), "example_ct_sm"),
                        (str(real / "example_ct_dicom"), str(real / "example_seg_dicom.nii.gz"), "DICOM series")]}
    cases = json.loads((synthetic_dir / "dataset.json").read_text())["training"][:columns]
    rows["synthetic"] = [(str(synthetic_dir / c["image"]), str(synthetic_dir / c["label"]),
                          f"synthetic {i} ({c['source'].split('_')[0]})") for i, c in enumerate(cases)]
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.8), squeeze=False)
    for row, (kind, entries) in enumerate(rows.items()):
        for column in range(columns):
            axis = axes[row, column]
            axis.axis("off")
            if column >= len(entries):
                continue
            image, label, spacing = _spleen_slice(*entries[column][:2])
            extent = [0, image.shape[0] * spacing[0], 0, image.shape[1] * spacing[1]]
            axis.imshow(image.T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", extent=extent)
            axis.contour(label.T.astype(float), [0.5], colors="r", linewidths=0.8, origin="lower", extent=extent)
            axis.set_title(f"{entries[column][2]}\n{image.shape[0]}×{image.shape[1]}, {spacing[0]:.2f} mm", fontsize=9)
    fig.suptitle(f"real (top) and synthetic (bottom) CT, window {window[0]:.0f}…{window[1]:.0f} HU, spleen in red; "
                 "image x = patient's right", fontsize=10)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=90)
    plt.close(fig)
    return figure


if __name__ == "__main__":
    main()
