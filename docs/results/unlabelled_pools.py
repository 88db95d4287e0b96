"""Write the nested unlabelled pools of configs/experiments/levers.json: the split's teacher-train volumes
outside the student's labelled ones, then the extra cases in order of their number.

    python docs/results/unlabelled_pools.py --datalist OUT/datalists/split0-f50.json --extra unlabelled --sizes 48 96

writes unlabelled/pool_48.json and unlabelled/pool_96.json (lists of image paths relative to that folder).
"""

import argparse
import json
import os
import re
from pathlib import Path

from bundle.data.slicing import unlabeled_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", required=True, help="the grid's split (OUT/datalists/split0-f50.json)")
    parser.add_argument("--extra", required=True, help="folder of `spleen-kd synthesize --first_case 40` (pools go here)")
    parser.add_argument("--sizes", type=int, nargs="+", required=True)
    args = parser.parse_args()
    split = json.loads(Path(args.datalist).read_text())
    pool = [entry["image"] for entry in unlabeled_images(split)]  # the default pool: kd.json's own choice
    extra = Path(args.extra)
    number = lambda path: int(re.search(r"(\d+)\.nii\.gz$", path.name).group(1))
    pool += [str(p) for p in sorted((extra / "imagesTr").glob("spleen_*.nii.gz"), key=number)]
    for size in args.sizes:
        if size > len(pool):
            raise SystemExit(f"a pool of {size} needs {size - len(pool)} more extra cases in {extra}.")
        chosen = [os.path.relpath(Path(p).resolve(), extra.resolve()) for p in pool[:size]]
        (extra / f"pool_{size}.json").write_text(json.dumps(chosen, indent=1) + "\n")
        print(f"{extra / f'pool_{size}.json'}: {size} volumes ({chosen[0]} ... {chosen[-1]})")


if __name__ == "__main__":
    main()
