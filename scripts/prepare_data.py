"""Get the data ready and write the by-volume splits that every workflow reads.

    python scripts/prepare_data.py --dataset_dir data/Task09_Spleen --download --datalist eval/datalist.json
    python scripts/prepare_data.py --dataset_dir data/phantoms --phantoms 16 --datalist eval/datalist.json
    python scripts/prepare_data.py --source_datalist my_pairs.json --label_value 1 --datalist eval/datalist.json

The split parameters must match the bundle configs (``seed``, ``*_fraction``, ``label_value``,
``datalist_file`` in configs/train.json), or the first bundle run writes a new split.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path



def main(argv: list[str] | None = None) -> dict:
    from bundle.data.datalist import SPLITS, DataError, load_or_create_datalist
    from bundle.data.download import MSD_SPLEEN_MD5, MSD_SPLEEN_URL, TASK, download_msd_spleen
    from bundle.data.phantoms import make_phantom_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default=f"data/{TASK}", help="MSD-layout folder (with dataset.json)")
    parser.add_argument("--source_datalist", help="a JSON list of {image, label} pairs, used instead of dataset_dir")
    parser.add_argument("--download", action="store_true",
                        help=f"download MSD {TASK} (1.5 GB, MD5-checked) into the parent of --dataset_dir")
    parser.add_argument("--url", default=MSD_SPLEEN_URL)
    parser.add_argument("--md5", default=MSD_SPLEEN_MD5)
    parser.add_argument("--phantoms", type=int, default=0, metavar="N",
                        help="write N phantom volumes into --dataset_dir (seeded by --seed)")
    parser.add_argument("--datalist", default="eval/datalist.json", help="where the splits are written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val_fraction", type=float, default=0.15)
    parser.add_argument("--test_fraction", type=float, default=0.2)
    parser.add_argument("--student_fraction", type=float, default=0.5)
    parser.add_argument("--label_value", type=int, default=1, help="the spleen's value in the label maps")
    args = parser.parse_args(argv)
    if args.download and Path(args.dataset_dir).name != TASK:
        parser.error(f"--download extracts into a folder named {TASK}: pass --dataset_dir .../{TASK}")
    if args.download and args.phantoms:
        parser.error("choose --download or --phantoms, not both")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        dataset_dir = Path(args.dataset_dir)
        if args.download:
            dataset_dir = download_msd_spleen(dataset_dir.parent, args.url, args.md5)
        if args.phantoms:
            make_phantom_dataset(dataset_dir, args.phantoms, args.seed)
        split = load_or_create_datalist(str(dataset_dir), args.datalist, args.seed, args.val_fraction,
                                        args.test_fraction, args.student_fraction, args.label_value,
                                        args.source_datalist)
    except DataError as error:
        sys.exit(f"error: {error}")
    print(f"{args.datalist}: " + ", ".join(f"{key} {len(split[key])} volumes" for key in SPLITS))
    return split


if __name__ == "__main__":
    main()
