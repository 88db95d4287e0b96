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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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
    return path


if __name__ == "__main__":
    main()
