"""Image/label pairs from an MSD folder or any datalist, checked, and split by volume into a reusable file.

Splits are by volume, never by slice (slices of one patient must not sit in both train and test),
and deterministic from the seed: ``teacher_train``, ``validation``, ``test``, and ``student_train``
(a fraction of ``teacher_train``). They are written once to a datalist JSON that later runs
(student, KD, evaluation) read back, so every workflow sees the same volumes; changing a parameter
or the source's content makes a new split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.transforms import MapTransform

from ..files import atomic_write_text

logger = logging.getLogger(__name__)

SPLITS = ("teacher_train", "validation", "test", "student_train")
SETUP_HINT = ("pass --dataset_dir (config key `dataset_dir`) pointing at a Task09_Spleen folder, download it with "
              "`spleen-kd prepare-data --dataset_dir data/Task09_Spleen --download`, or make synthetic CT with "
              "`spleen-kd synthesize --out data/synthetic --cases 48`")


class DataError(ValueError):
    """A problem with the input data; the message names the file or key and says what to do."""


def claim_dataset_folder(out: Path, name: str, what: str) -> None:
    """Refuse to write a generated dataset into a folder whose ``dataset.json`` describes another one."""
    description_path = out / "dataset.json"
    if not description_path.is_file():
        return
    try:
        existing_name = json.loads(description_path.read_text()).get("name")
    except (json.JSONDecodeError, AttributeError):
        existing_name = None
    if existing_name != name:
        raise DataError(f"'{description_path}' describes another dataset ({existing_name!r}); write {what} "
                        "into an empty folder instead (`--out`).")


def _source_file(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None) -> Path:
    """The JSON that lists the pairs: ``dataset_dir/dataset.json`` or the user's datalist."""
    if datalist is not None:
        source = Path(datalist)
        if not source.is_file():
            raise DataError(f"datalist '{source}' (key `source_datalist`) does not exist; give a JSON list of "
                            "{\"image\": ..., \"label\": ...} pairs, or set it to null to use `dataset_dir`.")
        return source.resolve()
    if dataset_dir is None:
        raise DataError(f"no data given: set `dataset_dir` or `source_datalist`; {SETUP_HINT}.")
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise DataError(f"dataset folder '{folder}' does not exist; {SETUP_HINT}.")
    source = folder / "dataset.json"
    if not source.is_file():
        raise DataError(f"'{source}' is missing, so '{folder}' is not an MSD-style dataset folder; {SETUP_HINT}.")
    return source.resolve()


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"'{path}' is not valid JSON ({error}); fix or replace it.") from None


def _resolve(path: str, base: Path) -> str:
    return str(Path(path) if os.path.isabs(path) else (base / path).resolve())


def _pairs_from_entries(entries, source: Path, where: str) -> list[dict]:
    """Validated ``{"image", "label"}`` pairs with absolute paths; ``where`` names the list in messages."""
    if not isinstance(entries, list):
        raise DataError(f"{where} of '{source}' must be a list of {{\"image\": ..., \"label\": ...}} entries.")
    pairs, seen = [], set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DataError(f"entry {index} of {where} in '{source}' has no \"image\" path: {entry!r}.")
        if not isinstance(entry.get("label"), str):
            raise DataError(f"image '{entry['image']}' (entry {index} of {where} in '{source}') has no label; "
                            "every image used for training or evaluation needs its label map under \"label\".")
        pair = {"image": _resolve(entry["image"], source.parent), "label": _resolve(entry["label"], source.parent)}
        for key in ("image", "label"):
            if not os.path.exists(pair[key]):
                raise DataError(f"{key} '{pair[key]}' (entry {index} of {where} in '{source}') does not exist.")
        if pair["image"] in seen:
            raise DataError(f"image '{pair['image']}' is listed twice in {where} of '{source}'; a volume may "
                            "appear once, or the by-volume split could put it in two splits.")
        seen.add(pair["image"])
        pairs.append(pair)
    return pairs


def read_pairs(dataset_dir: str | os.PathLike | None = None,
               datalist: str | os.PathLike | None = None) -> list[dict]:
    """``[{"image", "label"}]`` with absolute paths, from ``dataset_dir/dataset.json`` ("training"
    entries, MSD layout) or from ``datalist`` (a JSON list of pairs, or a dict with a "training"
    list), whose relative paths count from its folder. Images may be NIfTI files or DICOM folders."""
    if dataset_dir is not None and datalist is not None:
        raise DataError("give either `dataset_dir` or `source_datalist`, not both.")
    source = _source_file(dataset_dir, datalist)
    content = _load_json(source)
    entries = content.get("training") if isinstance(content, dict) else content
    if not entries:
        raise DataError(f"'{source}' lists no image/label pairs: expected a non-empty list, or a dict with a "
                        "non-empty \"training\" list, of {\"image\": ..., \"label\": ...}.")
    return _pairs_from_entries(entries, source, "the \"training\" list" if isinstance(content, dict) else "the list")


def _open(path: str, whole: bool) -> tuple[tuple[int, ...], np.ndarray, np.ndarray | None]:
    """``(shape, affine, voxels)`` of a NIfTI file or a DICOM folder (or any file ITK reads).

    ``whole=False`` reads only the last slice of a 3D NIfTI: a gzip stream must still be decompressed
    to its end, which finds truncation, but nothing large is held in memory. ``voxels`` is None for
    a NIfTI that is not 3D, which the caller rejects by its shape.
    """
    try:
        if os.path.isdir(path) or not path.endswith((".nii", ".nii.gz")):
            from monai.transforms import LoadImage

            volume = LoadImage(reader="ITKReader", image_only=True)(path)
            return tuple(volume.shape), np.asarray(volume.affine, dtype=float), np.asarray(volume)
        nifti = nib.load(path)
        if len(nifti.shape) != 3:
            return nifti.shape, nifti.affine, None
        voxels = nifti.dataobj[...] if whole else nifti.dataobj[..., -1]
        return nifti.shape, nifti.affine, np.asarray(voxels)
    except Exception as error:  # nibabel, gzip, zlib and ITK raise many types for a damaged file
        raise DataError(f"cannot read '{path}' ({type(error).__name__}: {error}); the file is damaged, truncated "
                        "or not a NIfTI/DICOM image. Re-export or re-download it.") from None


def _ras_shape(shape: tuple[int, ...], affine: np.ndarray) -> tuple[int, ...]:
    """The shape after reorienting to RAS, which is how the pipeline compares image and label."""
    orientation = nib.orientations.io_orientation(affine)
    if np.isnan(orientation).any():
        return shape
    ras = [0, 0, 0]
    for axis, (target, _) in enumerate(orientation):
        ras[int(target)] = shape[axis]
    return tuple(ras)


def _values_in(label: np.ndarray) -> set:
    if label.dtype.kind in "ub" and label.dtype.itemsize <= 2:
        return set(np.flatnonzero(np.bincount(label.ravel())).tolist())
    return set(np.unique(label).tolist())


def _off_grid(image, image_shape, label, label_shape, axis_order: str) -> str:
    return (f"image '{image}' {tuple(image_shape)} and label '{label}' {tuple(label_shape)} disagree in shape "
            f"(compared in {axis_order} axis order); a label map must be on its image's voxel grid. Is it the "
            "label of another scan, or resampled?")


class SameGridd(MapTransform):
    """Raises a ``DataError`` naming both files when a label is not on its image's voxel grid.

    ``check_pairs`` finds this for the datalists the bundle builds; placed after the reorientation in
    ``train.json``, this finds it for data that reaches the pipeline another way (MONAI Label's
    datastore, a datalist given to a workflow directly), where it would otherwise pass silently or
    end as a tensor-size error deep in the slicing. A volume without a label passes.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", axis_order: str = "RAS"):
        super().__init__([image_key, label_key], allow_missing_keys=True)
        self.image_key, self.label_key, self.axis_order = image_key, label_key, axis_order

    def __call__(self, data):
        image, label = data.get(self.image_key), data.get(self.label_key)
        if image is not None and label is not None and tuple(image.shape[1:]) != tuple(label.shape[1:]):
            name = {key: getattr(value, "meta", {}).get("filename_or_obj", f"<{key}>")
                    for key, value in ((self.image_key, image), (self.label_key, label))}
            raise DataError(_off_grid(name[self.image_key], image.shape[1:], name[self.label_key], label.shape[1:],
                                      self.axis_order))
        return data


def check_pairs(pairs: Sequence[dict], label_value: int = 1, require_spleen: bool = True) -> list[dict]:
    """Open every image and label and check that each is readable and 3D, that image and label
    share their shape (in RAS axis order), and, with ``require_spleen``, that some voxel of some
    label map equals ``label_value``. Returns per case ``image``, ``label``, ``shape``,
    ``spacing`` (mm), ``orientation`` (axis codes) and ``spleen_voxels``."""
    info, values_seen, spleen_found = [], set(), False
    for pair in pairs:
        image_shape, image_affine, _ = _open(pair["image"], whole=False)
        label_shape, label_affine, label = _open(pair["label"], whole=True)
        for key, shape in (("image", image_shape), ("label", label_shape)):
            if len(shape) != 3:
                raise DataError(f"{key} '{pair[key]}' has shape {tuple(shape)}, {len(shape)}D given: a 3D volume "
                                "is expected (one channel, no time axis). Export it as a single 3D volume.")
        if _ras_shape(image_shape, image_affine) != _ras_shape(label_shape, label_affine):
            raise DataError(_off_grid(pair["image"], image_shape, pair["label"], label_shape, "RAS"))
        spleen_voxels = int(np.count_nonzero(label == label_value))
        spleen_found = spleen_found or spleen_voxels > 0
        if not spleen_found:  # only needed for the message when no label map has the value
            values_seen |= _values_in(label)
        spacing = np.sqrt((image_affine[:3, :3] ** 2).sum(axis=0))
        info.append({"image": pair["image"], "label": pair["label"], "shape": tuple(int(n) for n in image_shape),
                     "spacing": tuple(round(float(s), 4) for s in spacing),
                     "orientation": "".join(nib.orientations.aff2axcodes(image_affine)),
                     "spleen_voxels": spleen_voxels})
    if require_spleen and info and not spleen_found:
        shown = sorted(values_seen)
        raise DataError(f"no voxel equals label_value={label_value} in any of the {len(info)} label maps (values "
                        f"seen: {shown[:30]}{' ...' if len(shown) > 30 else ''}); set `label_value` to the "
                        "spleen's value, e.g. 1 for MSD and TotalSegmentator.")
    return info


def _count(n: int, fraction: float) -> int:
    """Volumes for a fraction: rounded half up, and at least one when the fraction is positive."""
    return 0 if fraction == 0 else max(1, int(n * fraction + 0.5))


def _volumes_needed(val_fraction: float, test_fraction: float) -> int:
    n = 1
    while n - _count(n, val_fraction) - _count(n, test_fraction) < 1:
        n += 1
    return n


def split_by_volume(pairs: Sequence[dict], seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                    student_fraction: float = 0.5) -> dict[str, list[dict]]:
    """Deterministic by-volume split into ``teacher_train``, ``validation``, ``test`` (disjoint) and
    ``student_train`` ⊂ ``teacher_train``; each list sorted by image path.

    The input order does not matter (pairs are sorted first). Validation and test do not depend on
    ``student_fraction``, and student subsets are nested: the 50% subset lies inside the 75% one.
    """
    for key, value, low, high in (("val_fraction", val_fraction, 0, 1), ("test_fraction", test_fraction, 0, 1),
                                  ("student_fraction", student_fraction, 0, 1)):
        if not low <= value <= high or (key == "student_fraction" and value == 0):
            raise DataError(f"`{key}` must be in {'(0, 1]' if key == 'student_fraction' else '[0, 1)'}, got {value}.")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"`val_fraction` + `test_fraction` = {val_fraction + test_fraction} leaves nothing for "
                        "training; keep their sum below 1.")
    ordered = sorted(pairs, key=lambda pair: (pair["image"], pair["label"]))
    n = len(ordered)
    n_val, n_test = _count(n, val_fraction), _count(n, test_fraction)
    if n - n_val - n_test < 1:
        raise DataError(f"{n} volumes are too few for val_fraction={val_fraction} and test_fraction="
                        f"{test_fraction}: {n_val} validation + {n_test} test volumes leave none for "
                        f"teacher_train; at least {_volumes_needed(val_fraction, test_fraction)} are needed. Add "
                        "volumes, or lower `val_fraction` / `test_fraction` (0 leaves that split empty).")
    rng = random.Random(seed)
    rng.shuffle(ordered)
    teacher_train = ordered[n_val + n_test:]
    rng.shuffle(teacher_train)
    student_train = teacher_train[:min(len(teacher_train), _count(len(teacher_train), student_fraction))]
    split = {"teacher_train": teacher_train, "validation": ordered[:n_val], "test": ordered[n_val:n_val + n_test],
             "student_train": student_train}
    return {key: sorted(split[key], key=lambda pair: pair["image"]) for key in SPLITS}


def with_training_volumes(split: dict[str, list[dict]], pairs: Sequence[dict], seed: int,
                          student_fraction: float) -> dict[str, list[dict]]:
    """``split`` with ``pairs`` added to its training volumes only: ``teacher_train`` gets all of them,
    ``student_train`` the same fraction of them as of the split's own, so a study of more training data
    scores every arm on the same validation and test volumes."""
    present = {pair["image"] for key in SPLITS for pair in split[key]}
    repeated = sorted(pair["image"] for pair in pairs if pair["image"] in present)
    if repeated:
        raise DataError(f"{len(repeated)} of the added training volumes (e.g. {repeated[:3]}) are already in the "
                        "split; add only volumes the split does not hold, or a test volume would be trained on.")
    added = split_by_volume(pairs, seed, val_fraction=0, test_fraction=0, student_fraction=student_fraction)
    grown = {**split, "teacher_train": split["teacher_train"] + added["teacher_train"],
             "student_train": split["student_train"] + added["student_train"]}
    return {key: sorted(grown[key], key=lambda pair: pair["image"]) for key in SPLITS}


def check_split(split: dict[str, list[dict]], path: str | os.PathLike) -> None:
    """Refuse a split file that would score a model on volumes it learned from: a volume in two of
    ``teacher_train`` / ``validation`` / ``test``, or a ``student_train`` volume outside ``teacher_train``
    (the student would learn from volumes its teacher never saw, or from evaluation volumes)."""
    members = {key: {pair["image"] for pair in split[key]} for key in SPLITS}
    for first, second in (("teacher_train", "validation"), ("teacher_train", "test"), ("validation", "test")):
        shared = sorted(members[first] & members[second])
        if shared:
            raise DataError(f"{len(shared)} volume(s) of '{path}' are in both \"{first}\" and \"{second}\" (e.g. "
                            f"{shared[:3]}); a volume may be in one split only, or its metrics are scored on "
                            "training data. Remove them from one of the lists.")
    outside = sorted(members["student_train"] - members["teacher_train"])
    if outside:
        raise DataError(f"{len(outside)} \"student_train\" volume(s) of '{path}' are not in \"teacher_train\" (e.g. "
                        f"{outside[:3]}); the student's labelled volumes must be a subset of the teacher's. Add "
                        "them to \"teacher_train\" or remove them from \"student_train\".")


def spleen_free_volumes(pairs: Sequence[dict], label_value: int = 1) -> int:
    """How many labelled volumes of ``pairs`` (a training set: ``train#dataset#data``, whatever filled it)
    hold no voxel of ``label_value``, and so train as spleen-free scans; each is named in a warning."""
    empty = [pair["label"] for pair in pairs if pair.get("label")
             and not np.count_nonzero(_open(pair["label"], whole=True)[2] == label_value)]
    if empty:
        logger.warning("%d label map(s) of the training set hold no voxel of label_value=%d and train as "
                       "spleen-free scans: %s%s", len(empty), label_value, ", ".join(empty[:5]),
                       " ..." if len(empty) > 5 else "")
    return len(empty)


def _write_json_atomically(path: Path, content: dict) -> None:
    """Readers (other ranks, other runs) see the old file or the whole new one, never a part."""
    atomic_write_text(path, json.dumps(content, indent=2))


def _reusable(existing: dict, path: Path, params: dict) -> dict | None:
    """The splits of an existing datalist file if they can be used as they are, else None.

    A file with our ``params`` is reused when they match and its files still exist. A file without
    ``params`` but with all four splits was made by hand: it is used as it is, never overwritten.
    """
    if not isinstance(existing, dict):
        existing = {}
    if "params" not in existing:
        if not all(key in existing for key in SPLITS):
            raise DataError(f"datalist file '{path}' (key `datalist_file`) exists but holds neither splits made "
                            f"here nor the lists {', '.join(SPLITS)}; delete it or choose another path.")
        logger.info("using the hand-made splits in %s", path)
        split = {key: _pairs_from_entries(existing[key], path, f"\"{key}\"") for key in SPLITS}
        check_split(split, path)
        return split
    if existing["params"] != params or not all(key in existing for key in SPLITS):
        return None
    listed = [pair for key in SPLITS for pair in existing[key]]
    if not all(os.path.exists(pair["image"]) and os.path.exists(pair["label"]) for pair in listed):
        return None
    return existing


def load_or_create_datalist(dataset_dir: str | None, datalist_file: str, seed: int = 0,
                            val_fraction: float = 0.15, test_fraction: float = 0.2, student_fraction: float = 0.5,
                            label_value: int = 1, source_datalist: str | None = None) -> dict:
    """The splits for this data and these parameters, as absolute ``{"image", "label"}`` lists under
    ``teacher_train``, ``validation``, ``test`` and ``student_train``.

    Read from ``datalist_file`` when it was made from the same source content with the same
    parameters; otherwise the pairs are read (``source_datalist`` if given, else ``dataset_dir``),
    checked, split, and written there atomically, with ``params`` and per-volume ``volumes`` info.
    """
    source = _source_file(None if source_datalist else dataset_dir, source_datalist)
    params = {"source": str(source), "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
              "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
              "student_fraction": student_fraction, "label_value": label_value}
    path = Path(datalist_file)
    if path.is_file():
        reused = _reusable(_load_json(path), path, params)
        if reused is not None:
            return reused
    pairs = read_pairs(dataset_dir=None if source_datalist else dataset_dir, datalist=source_datalist)
    split = split_by_volume(pairs, seed, val_fraction, test_fraction, student_fraction)
    volumes = check_pairs(pairs, label_value)
    content = {"params": params, **split, "volumes": volumes}
    _write_json_atomically(path, content)
    logger.info("wrote %s: %s", path, ", ".join(f"{key} {len(split[key])}" for key in SPLITS))
    return json.loads(json.dumps(content))  # the same types as when the file is reused
