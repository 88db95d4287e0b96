"""Write an MSD-layout phantom dataset (NIfTI in HU, dataset.json): python scripts/make_phantoms.py --out DIR"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data.phantoms import make_phantom_dataset  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (imagesTr/, labelsTr/, dataset.json)")
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 48])
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.5, 2.5, 5.0])
    args = parser.parse_args()
    path = make_phantom_dataset(args.out, args.cases, args.seed, args.shape, args.spacing)
    print(f"wrote {args.cases} phantom volumes and {path}")
