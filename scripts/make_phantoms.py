"""Write an MSD Task09_Spleen-layout phantom dataset (NIfTI in HU, dataset.json) for offline runs.

    python scripts/make_phantoms.py --out data/phantoms --cases 16 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path



def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (imagesTr/, labelsTr/, dataset.json)")
    parser.add_argument("--cases", type=int, default=16, help="number of volumes")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 48], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.5, 2.5, 5.0], metavar=("X", "Y", "Z"),
                        help="voxel size in mm")
    args = parser.parse_args(argv)

    from bundle.data.datalist import DataError
    from bundle.data.phantoms import make_phantom_dataset

    start = time.perf_counter()
    try:
        path = make_phantom_dataset(args.out, args.cases, args.seed, args.shape, args.spacing)
    except DataError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.cases} phantom volumes and {path} in {time.perf_counter() - start:.1f} s")
    return path


if __name__ == "__main__":
    main()
