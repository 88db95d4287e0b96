"""Training slices from volumes with and without labels.

Distillation needs no label, so a student can learn from the teacher on volumes nobody annotated.
:class:`WithUnlabeled` pairs every labelled training volume with one unlabelled volume: a batch
holds the labelled volume's slices (exactly those the baseline student gets, same random stream)
followed by slices of an unlabelled volume, marked ``labeled = 0`` and given an all-zero label that
no loss reads (segmentation terms take ``labeled_only``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.transforms import Randomizable
from torch.utils.data import Dataset

from .datalist import DataError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")


def _image_entries(paths: Sequence[str], where: str) -> list[dict]:
    entries = []
    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"unlabelled image '{path}' (listed in {where}) does not exist.")
        entries.append({"image": str(path)})
    if not entries:
        raise DataError(f"{where} lists no images; give NIfTI files or DICOM folders, or set `use_unlabeled` false.")
    return entries


def unlabeled_images(datalist: dict, source: str | os.PathLike | None = None) -> list[dict]:
    """``[{"image": path}]`` of the volumes the student may learn from without labels.

    ``source`` None: the teacher's training volumes outside the student's labelled subset (their labels
    are never read). A folder: every NIfTI/MHA/NRRD file and DICOM sub-folder in it. A JSON file: a
    list of paths or ``{"image": ...}`` entries (a dict with a "training" list also works), relative
    to the file's folder. No test or validation volume may appear: that would leak the evaluation.
    """
    if source is None:
        labelled = {pair["image"] for pair in datalist["student_train"]}
        paths = [pair["image"] for pair in datalist["teacher_train"] if pair["image"] not in labelled]
        if not paths:
            raise DataError("every teacher_train volume is already in the student's labelled subset "
                            "(student_fraction = 1): there is no unlabelled volume; lower `student_fraction` or set "
                            "`unlabeled_source` to a folder or list of images.")
        return _image_entries(paths, "teacher_train minus student_train")
    source = Path(source)
    if source.is_dir():
        paths = sorted(str(p) for p in source.iterdir()
                       if (p.is_file() and p.name.endswith(IMAGE_SUFFIXES)) or (p.is_dir() and any(p.iterdir())))
        entries = _image_entries(paths, f"folder '{source}' (key `unlabeled_source`)")
    elif source.is_file():
        try:
            content = json.loads(source.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"'{source}' (key `unlabeled_source`) is not valid JSON ({error}).") from None
        items = content.get("training", []) if isinstance(content, dict) else content
        paths = []
        for index, item in enumerate(items if isinstance(items, list) else []):
            path = item.get("image") if isinstance(item, dict) else item
            if not isinstance(path, str):
                raise DataError(f"entry {index} of '{source}' is neither a path nor an {{\"image\": ...}} entry.")
            paths.append(path if os.path.isabs(path) else str((source.parent / path).resolve()))
        entries = _image_entries(paths, f"'{source}' (key `unlabeled_source`)")
    else:
        raise DataError(f"unlabelled source '{source}' (key `unlabeled_source`) does not exist; give a folder of "
                        "images, a JSON list of image paths, or null for the teacher's volumes outside the student subset.")
    held_out = {pair["image"] for key in ("validation", "test") for pair in datalist.get(key, [])}
    leaked = [e["image"] for e in entries if str(Path(e["image"]).resolve()) in held_out or e["image"] in held_out]
    if leaked:
        raise DataError(f"unlabelled images {leaked[:3]} are validation or test volumes; remove them from "
                        f"'{source}', or the evaluation would see volumes the student learned from.")
    return entries


class _Picker(Randomizable):
    """Draws which unlabelled volume joins a labelled one; seeded by MONAI's DataLoader like the transforms."""

    def __init__(self, count: int):
        self.count = count

    def randomize(self, data=None) -> int:
        return int(self.R.randint(self.count))


def _as_list(item) -> list[dict]:
    return list(item) if isinstance(item, (list, tuple)) else [item]


class WithUnlabeled(Dataset):
    """Labelled items, each followed by the slices of a randomly drawn unlabelled volume.

    Its length is the labelled dataset's, so an epoch has the baseline's iterations and the shuffle
    order is the baseline's. ``labeled`` (first attribute) receives the random seed MONAI's DataLoader
    gives a plain labelled dataset, so the labelled slices are the baseline's too. Without unlabelled
    data the items pass through unchanged.
    """

    def __init__(self, labeled: Dataset, unlabeled: Dataset | None = None):
        self.labeled = labeled
        self.unlabeled = unlabeled if unlabeled is not None and len(unlabeled) > 0 else None
        self.picker = _Picker(len(self.unlabeled) if self.unlabeled is not None else 1)

    def __len__(self) -> int:
        return len(self.labeled)

    def __getitem__(self, index: int):
        item = self.labeled[index]
        if self.unlabeled is None:
            return item
        labelled = [{**d, "labeled": 1} for d in _as_list(item)]
        unlabelled = []
        for d in _as_list(self.unlabeled[self.picker.randomize()]):
            unlabelled.append({**d, "label": torch.zeros_like(d["image"]), "labeled": 0})
        return labelled + unlabelled
