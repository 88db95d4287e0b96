"""Download MSD Task09_Spleen: checksum-verified, atomic, restartable (MONAI's download_and_extract)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .datalist import DataError

MSD_SPLEEN_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task09_Spleen.tar"
MSD_SPLEEN_MD5 = "410d4a301da4e5b2f6f86ec3ddba524e"


def download_msd_spleen(root_dir: str | os.PathLike, url: str = MSD_SPLEEN_URL, md5: str = MSD_SPLEEN_MD5) -> Path:
    """``root_dir/Task09_Spleen`` with ``dataset.json``, downloaded and extracted if not already there.

    MONAI downloads into a temporary file and moves it into place only when complete, then checks the
    MD5: a bad archive is deleted (so a rerun downloads again) and nothing is extracted. Extraction goes
    to a temporary folder that is renamed at the end, so an interrupted run never leaves a folder that
    looks complete.
    """
    from monai.apps import download_url, extractall

    root = Path(root_dir)
    target = root / "Task09_Spleen"
    if (target / "dataset.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "Task09_Spleen.tar"
    try:
        download_url(url, str(archive), hash_val=md5, hash_type="md5")
    except (RuntimeError, OSError, ValueError) as error:
        archive.unlink(missing_ok=True)
        raise DataError(f"download of '{url}' into '{archive}' failed or did not match md5 {md5} ({error}); "
                        "nothing was extracted. Check the network and rerun.") from None
    staging = root / ".Task09_Spleen.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    extractall(str(archive), str(staging), hash_val=md5, hash_type="md5", has_base=False)
    extracted = staging / "Task09_Spleen" if (staging / "Task09_Spleen").is_dir() else staging
    if not (extracted / "dataset.json").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"archive '{archive}' holds no Task09_Spleen/dataset.json; it is not the MSD spleen task.")
    os.replace(extracted, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target
