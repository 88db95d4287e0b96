"""Image/label pairs from an MSD folder or any datalist, checked, and split by volume into a reusable file.

Splits are by volume, never by slice, and deterministic from the seed: ``teacher_train``,
``validation``, ``test``, and ``student_train`` (a fraction of ``teacher_train``). They are written
once to a datalist JSON that later runs (student, KD, evaluation) read back, so every workflow sees
the same volumes; changing a parameter or the source writes a new split.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPLITS = ("teacher_train", "validation", "test", "student_train")
DATA_HELP = ("pass --dataset_dir pointing at a Task09_Spleen folder (python scripts/prepare_data.py --download), "
             "or make phantoms: python scripts/make_phantoms.py --out DIR")


class DataError(ValueError):
    """A problem with the input data; the message names the file or key and what to do."""


def _resolve(path: str, base: Path) -> str:
    return str(Path(path) if os.path.isabs(path) else (base / path).resolve())


def read_pairs(dataset_dir: str | os.PathLike | None = None, datalist: str | os.PathLike | None = None) -> list[dict]:
    """``[{"image", "label"}]`` from ``dataset_dir/dataset.json`` (MSD layout) or from a datalist JSON
    (a list of pairs, or a dict with a ``"training"`` list); relative paths are resolved against the
    folder of the JSON file. Images may be NIfTI files or DICOM-series folders."""
    if datalist is not None:
        source = Path(datalist)
        if not source.is_file():
            raise DataError(f"datalist '{source}' does not exist (key `source_datalist`).")
    else:
        if dataset_dir is None:
            raise DataError(f"no data given: set `dataset_dir` or `source_datalist`; {DATA_HELP}.")
        folder = Path(dataset_dir)
        if not folder.is_dir():
            raise DataError(f"dataset folder '{folder}' (key `dataset_dir`) does not exist; {DATA_HELP}.")
        source = folder / "dataset.json"
        if not source.is_file():
            raise DataError(f"'{source}' is missing: `dataset_dir` must be an MSD-style folder with dataset.json; "
                            f"{DATA_HELP}.")
    try:
        content = json.loads(source.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"'{source}' is not valid JSON: {error}.") from None
    entries = content.get("training") if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise DataError(f"'{source}' holds no image/label pairs: expected a non-empty list, or a dict with a "
                        "'training' list, of {\"image\": ..., \"label\": ...}.")
    pairs = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"entry {index} of '{source}' has no 'image': {entry!r}.")
        if not entry.get("label"):
            raise DataError(f"image '{entry['image']}' (entry {index} of '{source}') has no label; every training "
                            "image needs its spleen label.")
        pair = {"image": _resolve(entry["image"], source.parent), "label": _resolve(entry["label"], source.parent)}
        for key in ("image", "label"):
            if not os.path.exists(pair[key]):
                raise DataError(f"{key} '{pair[key]}' (entry {index} of '{source}') does not exist.")
        pairs.append(pair)
    return pairs


def _read_array(path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """The voxel array and spacing of a NIfTI file or a DICOM-series folder (via MONAI's ITK reader)."""
    try:
        if os.path.isdir(path):
            from monai.transforms import LoadImage

            image = LoadImage(reader="ITKReader", image_only=True)(path)
            return np.asarray(image), tuple(float(s) for s in image.pixdim)
        import nibabel as nib

        nifti = nib.load(path)
        return np.asanyarray(nifti.dataobj), tuple(float(s) for s in nifti.header.get_zooms())
    except Exception as error:  # nibabel/ITK/gzip raise many types for a damaged file
        raise DataError(f"cannot read '{path}' ({type(error).__name__}: {error}); the file is damaged, truncated "
                        "or not a NIfTI/DICOM image. Re-export or re-download it.") from None


def check_pairs(pairs: Sequence[dict], label_value: int = 1, require_spleen: bool = True) -> list[dict]:
    """Open every image and label and check: readable, 3D, matching shapes, and (over all labels) at
    least one voxel equal to ``label_value``. Returns per-case ``shape``, ``spacing`` and ``spleen_voxels``."""
    info, values_seen = [], set()
    for pair in pairs:
        image, spacing = _read_array(pair["image"])
        label, _ = _read_array(pair["label"])
        for key, array in (("image", image), ("label", label)):
            if array.ndim != 3:
                raise DataError(f"{key} '{pair[key]}' has shape {tuple(array.shape)}: a 3D volume is expected "
                                f"({array.ndim}D given).")
        if image.shape != label.shape:
            raise DataError(f"image '{pair['image']}' {tuple(image.shape)} and label '{pair['label']}' "
                            f"{tuple(label.shape)} disagree in shape; they must be voxel-aligned.")
        voxels = int(np.count_nonzero(label == label_value))
        if len(values_seen) < 64:
            values_seen.update(np.unique(label).astype(int).tolist()[:64])
        info.append({**pair, "shape": tuple(int(s) for s in image.shape), "spacing": spacing[:3],
                     "spleen_voxels": voxels})
    if require_spleen and info and not any(case["spleen_voxels"] for case in info):
        raise DataError(f"no voxel equals label_value={label_value} in any of the {len(info)} label maps (values seen: "
                        f"{sorted(values_seen)[:20]}); set `label_value` to the spleen's value, e.g. 1 for MSD and "
                        "TotalSegmentator maps.")
    return info


def _count(n: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, int(round(n * fraction)))


def split_by_volume(pairs: Sequence[dict], seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                    student_fraction: float = 0.5) -> dict[str, list[dict]]:
    """Deterministic by-volume split; ``student_train`` ⊂ ``teacher_train``. At least one volume in each
    split whose fraction is positive, else :class:`DataError`."""
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction),
                       ("student_fraction", student_fraction)):
        if not 0 <= value <= 1:
            raise DataError(f"`{key}` must be within 0..1, got {value}.")
    ordered = sorted(pairs, key=lambda p: (p["image"], p["label"]))
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_val, n_test = _count(n, val_fraction), _count(n, test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"{n} volumes are too few for val_fraction={val_fraction} and test_fraction={test_fraction}: "
                        f"{n_val} validation + {n_test} test leave no training volume. Lower the fractions or add "
                        "volumes (at least 3 are needed).")
    split = {"test": ordered[:n_test], "validation": ordered[n_test:n_test + n_val],
             "teacher_train": ordered[n_test + n_val:]}
    student = random.Random(seed + 1).sample(split["teacher_train"], min(n_train, _count(n_train, student_fraction)))
    split["student_train"] = sorted(student, key=lambda p: split["teacher_train"].index(p))
    return {key: split[key] for key in SPLITS}


def _atomic_write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)


def load_or_create_datalist(dataset_dir: str | None, datalist_file: str, seed: int = 0, val_fraction: float = 0.15,
                            test_fraction: float = 0.2, student_fraction: float = 0.5, label_value: int = 1,
                            source_datalist: str | None = None) -> dict[str, list[dict]]:
    """The splits for this data and these parameters: read from ``datalist_file`` when it was written with
    the same ones, else made (pairs read and checked, split by volume) and written there atomically."""
    params = {"source": str(Path(source_datalist).resolve()) if source_datalist else
              str(Path(dataset_dir).resolve()) if dataset_dir else None,
              "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
              "student_fraction": student_fraction, "label_value": label_value}
    path = Path(datalist_file)
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
        if existing.get("params") == params and all(key in existing for key in SPLITS):
            return {key: existing[key] for key in SPLITS}
    pairs = read_pairs(dataset_dir=None if source_datalist else dataset_dir, datalist=source_datalist)
    split = split_by_volume(pairs, seed, val_fraction, test_fraction, student_fraction)
    check_pairs(split["teacher_train"], label_value)
    check_pairs(split["validation"] + split["test"], label_value, require_spleen=False)
    _atomic_write_json(path, {"params": params, **split})
    return split


def split_sizes(split: dict) -> str:
    """One line for logs: the number of volumes in each split."""
    return ", ".join(f"{key} {len(split[key])}" for key in SPLITS)
