"""Write an MSD Task09_Spleen-layout dataset of synthetic CT (HU) generated from real label maps, or of
procedural phantoms.

    spleen-kd synthesize --out data/synthetic --cases 360 --seed 1000            # as the shipped models' data
    spleen-kd synthesize --out data/small --cases 16 --matrix_share 0 --slice_thickness 3 5 --max_slices 24
    spleen-kd synthesize --out data/mine --sources my_maps/*.nii.gz --naming totalsegmentator
    spleen-kd synthesize --out data/phantoms --phantoms --cases 16
    spleen-kd synthesize --out data/more --cases 84 --first_case 40   # cases 40-123: new, disjoint from data/small's 0-39

By default the anatomy comes from the three TotalSegmentator dataset subjects with a spleen (package data,
``bundle/data/sources/totalseg``), their spleens replaced by the 40 MSD masks; never from the maps of
the real CT fixtures. An interrupted run resumes: cases already written are kept. See docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    from .assets import DEFAULT_SOURCES, DEFAULT_SPLEEN_MASKS, HU_STATS_FILE

    parser = argparse.ArgumentParser(prog="spleen-kd synthesize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (imagesTr/, labelsTr/, dataset.json)")
    parser.add_argument("--cases", type=int, default=16, help="number of volumes (sources are used in turn)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, sources and options: same files")
    parser.add_argument("--first_case", type=int, default=0,
                        help="number of the first case: a second folder of cases that no first folder holds "
                             "(e.g. more unlabelled volumes of the same seed)")
    parser.add_argument("--phantoms", action="store_true", help="procedural phantoms instead (fast; tests use them)")
    parser.add_argument("--sources", nargs="+", default=[str(s) for s in DEFAULT_SOURCES],
                        help="label maps with TotalSegmentator structures (1 = spleen)")
    parser.add_argument("--naming", choices=["dataset", "totalsegmentator"], default="dataset",
                        help="value order of the sources: 'dataset' (sources/totalseg/labels.json) or "
                             "'totalsegmentator' (the maps TotalSegmentator writes)")
    parser.add_argument("--spleen_masks", nargs="*", default=[str(s) for s in DEFAULT_SPLEEN_MASKS],
                        help="real spleen masks placed in place of the sources' own (none: keep their own)")
    parser.add_argument("--hu_stats", default=str(HU_STATS_FILE), help="from `spleen-kd measure-hu`")
    parser.add_argument("--matrix_share", type=float, help="share of cases on a 512² clinical grid (default 0.7)")
    parser.add_argument("--inplane_spacing", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="in-plane pixel size range (mm) of the other cases (default 1.2 3.0)")
    parser.add_argument("--slice_thickness", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="slice thickness range in mm (default 1 8)")
    parser.add_argument("--max_slices", type=int, help="upper bound on slices per volume (default 64)")
    parser.add_argument("--figure", help="also draw synthetic slices beside the real CT fixtures to this PNG")
    args = parser.parse_args(argv)

    from .datalist import DataError

    start = time.perf_counter()
    try:
        if args.first_case < 0:
            raise ValueError(f"--first_case {args.first_case} is negative; give 0 or the number after the last case "
                             "of the folders you already have.")
        if args.phantoms and args.first_case:
            raise ValueError("--first_case applies to synthetic CT; phantoms always start at case 0.")
        if args.phantoms:
            from .phantoms import make_phantom_dataset

            path = make_phantom_dataset(args.out, args.cases, args.seed)
        else:
            from .synthetic import make_synthetic_dataset

            options = {key: value for key, value in (
                ("matrix_share", args.matrix_share), ("inplane_spacing_mm", args.inplane_spacing),
                ("slice_thickness_mm", args.slice_thickness), ("max_slices", args.max_slices)) if value is not None}
            options["spleen_masks"] = args.spleen_masks
            path = make_synthetic_dataset(args.out, args.cases, args.seed, args.sources, args.naming, args.hu_stats,
                                          first_case=args.first_case, log=print, **options)
    except (DataError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.cases} {'phantom' if args.phantoms else 'synthetic CT'} volumes and {path} in "
          f"{time.perf_counter() - start:.1f} s")
    if args.figure:
        from ..report import real_and_synthetic_figure

        print(f"wrote {real_and_synthetic_figure(Path(args.out), Path(args.figure))}")
    return path
