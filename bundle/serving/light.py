"""The light serving path: ``configs/inference.json``'s segmentation in numpy, SciPy, nibabel, pydicom and
ONNX Runtime, with neither MONAI nor PyTorch imported, so that a one-volume command starts in a fraction
of a second instead of the seconds ``import monai`` takes.

Each step is the one inference.json runs, with the same numbers: read (NIfTI; a DICOM series ordered and
placed as ITK places it), reorient to the model's axis codes (nibabel's orientation transforms, which
MONAI's ``Orientationd`` uses), HU window, MONAI's anti-aliased resize (:mod:`bundle.arrays`, which the
MONAI path's ``Resized`` uses too), the ONNX model, the inverse resize and orientation, threshold,
largest component, a uint8 NIfTI on the input's grid. The model and its preprocessing come from the
checkpoint's description (:mod:`bundle.serving.model_info`), which inference.json reads as well.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import arrays
from . import model_info
from ..checks import InputError, as_volume, check_ct, check_exists, dicom_series
from .runtime import ONNX_DESCRIPTION, OnnxModel, process_settings

__all__ = ["InputError", "LightSegmenter", "Volume", "mask_path", "read_volume", "write_mask"]

logger = logging.getLogger(__name__)


@dataclass
class Volume:
    """A 3D image as loaded: voxels (float32, the file's index order) and the affine to RAS millimetres."""

    array: np.ndarray
    affine: np.ndarray
    source: str


def read_nifti(path: str | os.PathLike) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        array = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # nibabel, gzip and zlib raise many types for a damaged file
        raise InputError(f"'{path}' is not a readable NIfTI file ({type(error).__name__}: {error}); it is damaged, "
                         "truncated or of another format: re-export it (other formats: --engine monai).") from None
    return Volume(as_volume(array, str(path)), np.asarray(image.affine, dtype=np.float64), str(path))


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """A DICOM series as ITK (MONAI's ``ITKReader``) reads it, after :func:`~bundle.checks.dicom_series`
    has checked it: slices ordered along the slice normal, voxels ``[column, row, slice]`` with the rescale
    applied, the affine ITK's converted from LPS to RAS."""
    slices = dicom_series(folder)
    orientation = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    positions = np.array([np.dot(np.asarray(s.ImagePositionPatient, dtype=np.float64), normal) for s in slices])
    spacing_z = float(np.mean(np.diff(positions)))
    try:
        volume = np.stack([s.pixel_array.astype(np.float32) * float(getattr(s, "RescaleSlope", 1.0))
                           + float(getattr(s, "RescaleIntercept", 0.0)) for s in slices], axis=-1)
    except Exception as error:  # a pixel decoder missing or failing
        raise InputError(f"the pixels of the DICOM series '{folder}' cannot be decoded ({type(error).__name__}: "
                         f"{error}); segment it with --engine monai (ITK) or export it uncompressed.") from None
    volume = np.ascontiguousarray(np.transpose(volume, (1, 0, 2)))  # [row, column, slice] -> [column, row, slice]
    row_spacing, column_spacing = (float(v) for v in slices[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * column_spacing, column * row_spacing, normal * spacing_z
    lps[:3, 3] = np.asarray(slices[0].ImagePositionPatient, dtype=np.float64)
    return Volume(volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, str(folder))


def read_volume(path: str | os.PathLike, allow_non_ct: bool = False) -> Volume:
    """A NIfTI file or a DICOM series folder, checked as inference.json checks it
    (:mod:`bundle.checks`): readable, 3D, several slices, a CT in Hounsfield units."""
    check_exists(path)
    volume = read_dicom_series(path) if Path(path).is_dir() else read_nifti(path)
    check_ct(volume.array, volume.source, allow_non_ct)
    return volume


def to_orientation(array: np.ndarray, affine: np.ndarray, axcodes: str = "RAS") -> tuple[np.ndarray, np.ndarray]:
    """``array`` reoriented to ``axcodes`` and the transform that did it (as MONAI's ``Orientationd``)."""
    import nibabel as nib

    current = nib.orientations.io_orientation(affine)
    wanted = nib.orientations.axcodes2ornt(axcodes)
    transform = nib.orientations.ornt_transform(current, wanted)
    return nib.orientations.apply_orientation(array, transform), transform


def from_orientation(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_orientation`."""
    import nibabel as nib

    inverse = np.empty_like(transform)
    for source_axis, (target_axis, flip) in enumerate(transform):
        inverse[int(target_axis)] = (source_axis, flip)
    return nib.orientations.apply_orientation(array, inverse)


class LightSegmenter:
    """Segments volumes with an ONNX model and the preprocessing its checkpoint was trained with."""

    def __init__(self, onnx_path: str | os.PathLike, info: dict, threads: int = 0, batch_size: int = 8,
                 locate: bool = True):
        self.model = OnnxModel(onnx_path, threads)
        self.info, self.batch_size, self.locate = info, batch_size, locate
        self.process = process_settings()
        logger.info("light path: onnxruntime %s (%s), %d threads, model '%s'; %s", self.model.version,
                    self.model.precision, self.model.threads, self.model.path, self.process)

    @classmethod
    def for_checkpoint(cls, ckpt_path: str | os.PathLike, onnx_path: str | os.PathLike | None = None,
                       threads: int = 0, locate: bool = True) -> LightSegmenter:
        """The ONNX model exported from ``ckpt_path`` (``model.onnx`` beside it by default), refused when the
        description says it comes from other weights: the light path cannot export (it has no PyTorch)."""
        ckpt_path = Path(ckpt_path)
        onnx_path = Path(onnx_path) if onnx_path else ckpt_path.with_suffix(".onnx")
        info = model_info.read(ckpt_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"no ONNX model at '{onnx_path}': export it with `spleen-kd export --ckpt "
                                    f"{ckpt_path}`, or segment with --engine monai, which exports it.")
        segmenter = cls(onnx_path, info, threads, locate=locate)
        exported_from = json.loads(segmenter.model.metadata.get(ONNX_DESCRIPTION, "{}")).get("checkpoint_sha256")
        expected = info.get("checkpoint_sha256")
        if exported_from and expected and exported_from != expected:
            raise ValueError(f"the ONNX model '{onnx_path}' was not exported from '{ckpt_path}': export it again "
                             f"with `spleen-kd export --ckpt {ckpt_path}`.")
        return segmenter

    def network_input(self, volume: Volume) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        """``[D, 1, S, S]`` slices as the network sees them, the orientation transform and the oriented shape."""
        oriented, transform = to_orientation(volume.array, volume.affine, self.info["axcodes"])
        size = int(self.info["slice_size"])
        sigmas = arrays.antialias_sigmas(oriented.shape, (size, size, oriented.shape[2]))
        slices = arrays.resize_slices(oriented, size, sigmas, window=self.info["hu_window"])
        return slices[:, None], transform, oriented.shape

    def logits(self, slices: np.ndarray) -> np.ndarray:
        return np.concatenate([self.model(slices[i:i + self.batch_size])
                               for i in range(0, len(slices), self.batch_size)])

    def segment(self, volume: Volume) -> np.ndarray:
        """The uint8 mask on the volume's own grid (Fortran order, as NIfTI stores it)."""
        if any(p > 0 for p in self.info["pixdim"]):
            raise InputError("the model was trained on resampled voxels (pixdim); the light path does not "
                             "resample: segment with --engine monai.")
        slices, transform, oriented_shape = self.network_input(volume)
        if self.locate:  # only the slab where the spleen can be (arrays.located_logits)
            logits = arrays.located_logits(len(slices), lambda i: self.logits(slices[i]), self.info["threshold"])[0]
        else:
            logits = self.logits(slices)
        logits = logits[:, 0]  # [D, S, S]
        probability = 1.0 / (1.0 + np.exp(-np.moveaxis(logits, 0, 2)))  # [S, S, D]
        mask = arrays.thresholded_resize(probability.astype(np.float32), oriented_shape, self.info["threshold"])
        if self.info["largest_component"]:
            mask = arrays.keep_largest_component(mask)
        return np.asfortranarray(from_orientation(mask, transform))  # NIfTI's order: written without a copy


def mask_path(source: str, out_dir: str | os.PathLike) -> Path:
    """``<out>/<input name>_seg.nii.gz``, as inference.json's ``SaveImaged`` names it."""
    name = Path(source).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(out_dir) / f"{name}_seg.nii.gz"


def write_mask(mask: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    image = nib.Nifti1Image(np.asfortranarray(mask), affine)
    image.header.set_data_dtype(np.uint8)
    partial = path.with_name(f".{path.name}")
    nib.save(image, str(partial))
    os.replace(partial, path)
    return path
