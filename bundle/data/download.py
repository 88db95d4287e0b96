"""Download MSD Task09_Spleen: MD5-verified, and atomic at every step, so a rerun after an interruption works.

The archive streams into ``Task09_Spleen.tar.part`` beside its final place and is renamed only once
its MD5 matches; extraction goes to a staging folder that is renamed to ``Task09_Spleen`` only when
complete. MONAI's ``download_and_extract`` is not used: it stages the 1.5 GB download in the system
temp folder (which may not fit, and whose move across file systems is a copy that can be cut off
under the final name) and skips extraction into any non-empty folder, so a half-extracted folder
would pass for a complete one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from .datalist import DataError

logger = logging.getLogger(__name__)

MSD_SPLEEN_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task09_Spleen.tar"
MSD_SPLEEN_MD5 = "410d4a301da4e5b2f6f86ec3ddba524e"
TASK = "Task09_Spleen"
CHUNK = 1 << 20


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, archive: Path, md5: str) -> None:
    """Stream ``url`` into ``archive`` + ``.part``, hashing on the way; rename only if the MD5 matches."""
    part = archive.with_name(archive.name + ".part")
    digest, received = hashlib.md5(usedforsecurity=False), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as stream:
            total = int(response.headers.get("Content-Length") or 0)
            for block in iter(lambda: response.read(CHUNK), b""):
                stream.write(block)
                digest.update(block)
                received += len(block)
                if received % (256 * CHUNK) < len(block):
                    logger.info("downloaded %d of %s MiB", received >> 20, total >> 20 if total else "?")
    except (urllib.error.URLError, OSError) as error:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download '{url}' ({error}); check the connection and rerun, or download the "
                        f"archive yourself, extract it and pass its {TASK} folder as --dataset_dir.") from None
    if digest.hexdigest() != md5:
        part.unlink()
        raise DataError(f"the download of '{url}' ({received} bytes) did not match md5 {md5} (got "
                        f"{digest.hexdigest()}); it was deleted and nothing was extracted. Rerun to retry; if the "
                        "archive has moved, pass the new --url and its --md5.")
    os.replace(part, archive)


def _extract(archive: Path, target: Path) -> None:
    """Extract into a staging folder beside ``target`` and rename it into place when complete."""
    staging = target.with_name(f".{target.name}.extracting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"cannot extract '{archive}' ({error}); delete it and rerun to download it again.") from None
    if not (staging / TASK / "dataset.json").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"archive '{archive}' holds no {TASK}/dataset.json, so it is not the MSD spleen task; "
                        "delete it and check --url.")
    os.replace(staging / TASK, target)
    shutil.rmtree(staging)


def download_msd_spleen(root_dir: str | os.PathLike, url: str = MSD_SPLEEN_URL, md5: str = MSD_SPLEEN_MD5) -> Path:
    """``root_dir/Task09_Spleen`` holding ``dataset.json``, downloaded and extracted unless already there.

    A verified ``Task09_Spleen.tar`` in ``root_dir`` is extracted without downloading again; one
    whose MD5 does not match is downloaded anew. The archive is kept for re-extraction.
    """
    root = Path(root_dir)
    target = root / TASK
    if (target / "dataset.json").is_file():
        return target
    if target.is_dir() and any(target.iterdir()):
        raise DataError(f"'{target}' exists but has no dataset.json, so it is not a complete {TASK} folder (a "
                        "download here never leaves one half-written); move it away and rerun.")
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{TASK}.tar"
    if archive.is_file() and _md5_of(archive) == md5:
        logger.info("found verified %s; extracting", archive)
    else:
        logger.info("downloading %s into %s", url, archive)
        _fetch(url, archive, md5)
    _extract(archive, target)
    return target


PREPARE_HELP = """Get the data ready and write the by-volume splits that every workflow reads.

    spleen-kd prepare-data --dataset_dir data/Task09_Spleen --download --datalist eval/datalist.json
    spleen-kd prepare-data --dataset_dir data/phantoms --phantoms 16 --datalist eval/datalist.json
    spleen-kd prepare-data --source_datalist my_pairs.json --label_value 1 --datalist eval/datalist.json

The split parameters must match the bundle configs (``seed``, ``*_fraction``, ``label_value``,
``datalist_file`` in configs/train.json), or the first bundle run writes a new split."""


def main(argv: list[str] | None = None) -> dict:
    import argparse
    import sys

    from .datalist import SPLITS, load_or_create_datalist
    from .phantoms import make_phantom_dataset

    parser = argparse.ArgumentParser(prog="spleen-kd prepare-data", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=PREPARE_HELP)
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
