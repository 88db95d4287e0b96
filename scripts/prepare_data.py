"""Get the data ready and write the by-volume splits every workflow reads.

    python scripts/prepare_data.py --dataset_dir data/Task09_Spleen --download
    python scripts/prepare_data.py --dataset_dir data/phantoms --phantoms 16
    python scripts/prepare_data.py --source_datalist my_pairs.json --label_value 1
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data.datalist import DataError, load_or_create_datalist, split_sizes  # noqa: E402
from bundle.data.download import MSD_SPLEEN_MD5, MSD_SPLEEN_URL, download_msd_spleen  # noqa: E402
from bundle.data.phantoms import make_phantom_dataset  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default="data/Task09_Spleen")
    parser.add_argument("--source_datalist", help="a JSON list of {image, label} pairs instead of an MSD folder")
    parser.add_argument("--download", action="store_true", help="download MSD Task09_Spleen into dataset_dir's parent")
    parser.add_argument("--url", default=MSD_SPLEEN_URL)
    parser.add_argument("--md5", default=MSD_SPLEEN_MD5)
    parser.add_argument("--phantoms", type=int, default=0, help="write this many phantoms into dataset_dir")
    parser.add_argument("--datalist", default="eval/datalist.json", help="where the splits are written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val_fraction", type=float, default=0.15)
    parser.add_argument("--test_fraction", type=float, default=0.2)
    parser.add_argument("--student_fraction", type=float, default=0.5)
    parser.add_argument("--label_value", type=int, default=1)
    args = parser.parse_args()
    try:
        dataset_dir = args.dataset_dir
        if args.download:
            dataset_dir = str(download_msd_spleen(Path(args.dataset_dir).parent, args.url, args.md5))
        if args.phantoms:
            make_phantom_dataset(dataset_dir, args.phantoms, args.seed)
        split = load_or_create_datalist(dataset_dir, args.datalist, args.seed, args.val_fraction, args.test_fraction,
                                        args.student_fraction, args.label_value, args.source_datalist)
    except DataError as error:
        sys.exit(f"error: {error}")
    print(f"{args.datalist}: {split_sizes(split)}")
