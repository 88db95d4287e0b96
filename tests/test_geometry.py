"""Evaluation and inference put prediction and label on one grid, whatever the orientations of the files.

The images here encode the spleen in their intensities (164 HU inside, -57 HU outside: 1 and 0 after the
HU window), and the network is :class:`tests.geometry_probe.IntensityAsProbability`, perfect by
construction. A perfect prediction must score Dice >= 0.99 through the real bundle configs: anything less
is lost in orientation handling, resampling or inversion.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import TRAIN, bundle_run, config_files

PROBE = {"_target_": "tests.geometry_probe.IntensityAsProbability"}
INSIDE_HU, OUTSIDE_HU = 164, -57  # the ends of the default HU window


def _flip(data: np.ndarray, affine: np.ndarray, axes) -> tuple[np.ndarray, np.ndarray]:
    """The same volume stored with the voxel order of ``axes`` reversed (e.g. RAS -> LPS for axes 0, 1)."""
    for axis in axes:
        flip = np.eye(4)
        flip[axis, axis], flip[axis, 3] = -1, data.shape[axis] - 1
        data, affine = np.flip(data, axis), affine @ flip
    return np.ascontiguousarray(data), affine


def _synthetic_mask(shape=(150, 130, 12)) -> np.ndarray:
    """An off-centre ellipsoid, so that any flip or shift shows."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return ((i - 95) / 30.0) ** 2 + ((j - 50) / 22.0) ** 2 + ((k - 6) / 4.5) ** 2 <= 1


def _encode(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, INSIDE_HU, OUTSIDE_HU).astype(np.int16)


def _lps_image_and_las_label(out: Path) -> dict:
    """A synthetic anisotropic case: image stored LPS, label stored LAS, both of the same RAS mask."""
    mask = _synthetic_mask()
    ras = np.diag([0.8, 0.8, 3.0, 1.0])
    ras[:3, 3] = (-60.0, 20.0, -300.0)
    image, image_affine = _flip(_encode(mask), ras, axes=(0, 1))
    label, label_affine = _flip(mask.astype(np.uint8), ras, axes=(0,))
    assert nib.aff2axcodes(image_affine) == ("L", "P", "S") and nib.aff2axcodes(label_affine) == ("L", "A", "S")
    nib.save(nib.Nifti1Image(image, image_affine), out / "lps_image.nii.gz")
    nib.save(nib.Nifti1Image(label, label_affine), out / "las_label.nii.gz")
    return {"image": str(out / "lps_image.nii.gz"), "label": str(out / "las_label.nii.gz")}


def _ras_nifti(totalseg_dir: Path, out: Path) -> dict:
    """The real RAS label map (spleen = 1) with an image on its own grid."""
    label = nib.load(totalseg_dir / "example_seg.nii.gz")
    image = _encode(np.asarray(label.dataobj) == 1)
    nib.save(nib.Nifti1Image(image, label.affine), out / "ras_image.nii.gz")
    return {"image": str(out / "ras_image.nii.gz"), "label": str(totalseg_dir / "example_seg.nii.gz")}


def _dicom_series_and_las_label(totalseg_dir: Path, out: Path) -> dict:
    """The real DICOM series (stored LPS) re-encoded slice by slice, with its real LAS label map.

    Each pixel's spleen value is looked up in the label through patient coordinates (DICOM's LPS
    geometry and the NIfTI's RAS affine), independently of MONAI.
    """
    import pydicom

    label_nii = nib.load(totalseg_dir / "example_seg_dicom.nii.gz")
    spleen = np.asarray(label_nii.dataobj) == 1
    world_to_voxel = np.linalg.inv(label_nii.affine)
    series = out / "dicom"
    series.mkdir()
    found = 0
    for path in sorted((totalseg_dir / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(path)
        rows, cols = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        row_spacing, col_spacing = (float(s) for s in ds.PixelSpacing)
        lps = (np.array(ds.ImagePositionPatient, float) + cols[..., None] * col_spacing * row_dir
               + rows[..., None] * row_spacing * col_dir)
        ras = lps * (-1, -1, 1)
        voxel = np.rint(ras.reshape(-1, 3) @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]).astype(int)
        inside = np.all((voxel >= 0) & (voxel < spleen.shape), axis=1)
        voxel = np.clip(voxel, 0, np.array(spleen.shape) - 1)
        mask = (spleen[voxel[:, 0], voxel[:, 1], voxel[:, 2]] & inside).reshape(ds.Rows, ds.Columns)
        found += int(mask.sum())
        stored = (_encode(mask) - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
        ds.set_pixel_data(stored.astype(np.uint16), "MONOCHROME2", 16, generate_instance_uid=False)
        ds.save_as(series / path.name)
    assert found == spleen.sum()  # the two grids coincide: every spleen voxel has its pixel
    return {"image": str(series), "label": str(totalseg_dir / "example_seg_dicom.nii.gz")}


@pytest.fixture
def probe_checkpoint(tmp_path) -> Path:
    path = tmp_path / "probe.pt"
    torch.save(__import__("tests.geometry_probe", fromlist=["x"]).IntensityAsProbability().state_dict(), path)
    return path


@pytest.mark.parametrize("case, slice_size", [("ras_nifti", 96), ("dicom_las", 256), ("lps_las", 64)])
def test_a_perfect_prediction_scores_one_in_evaluation(case, slice_size, totalseg_dir, probe_checkpoint, tmp_path):
    make = {"ras_nifti": lambda: _ras_nifti(totalseg_dir, tmp_path),
            "dicom_las": lambda: _dicom_series_and_las_label(totalseg_dir, tmp_path),
            "lps_las": lambda: _lps_image_and_las_label(tmp_path)}[case]
    bundle_run("evaluating", config_files("student", "evaluate"), output_root=str(tmp_path), cases=[make()],
               network_def=PROBE, ckpt_path=str(probe_checkpoint), slice_size=slice_size, run_name="geometry", amp=False,
               allow_non_ct=True)
    summary = json.loads((tmp_path / "eval/geometry/test/summary.json").read_text())
    assert summary["volumes"] == 1
    assert summary["metrics"]["dice"]["mean"] >= 0.99, summary["metrics"]


def _label_on_grid(label_path: str, shape, affine) -> np.ndarray:
    """The spleen of a label file sampled at the voxel centres of another grid, through world coordinates."""
    label = nib.load(label_path)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    to_label = np.linalg.inv(label.affine) @ affine
    voxel = np.rint(index @ to_label[:3, :3].T + to_label[:3, 3]).astype(int)
    spleen = np.asarray(label.dataobj) == 1
    inside = np.all((voxel >= 0) & (voxel < spleen.shape), axis=1)
    voxel = np.clip(voxel, 0, np.array(spleen.shape) - 1)
    return (spleen[voxel[:, 0], voxel[:, 1], voxel[:, 2]] & inside).reshape(shape)


@pytest.mark.parametrize("case, slice_size", [("lps_las", 64), ("dicom_las", 256)])
def test_inference_of_a_non_ras_input_matches_its_known_mask(case, slice_size, totalseg_dir, probe_checkpoint,
                                                            tmp_path):
    made = (_lps_image_and_las_label(tmp_path) if case == "lps_las"
            else _dicom_series_and_las_label(totalseg_dir, tmp_path))
    bundle_run("run", "inference", output_root=str(tmp_path), input_files=[made["image"]],
               output_dir=str(tmp_path / "out"), network_def=PROBE, ckpt_path=str(probe_checkpoint),
               slice_size=slice_size, allow_non_ct=True)
    (written_path,) = (tmp_path / "out").glob("*_seg.nii.gz")
    written = nib.load(written_path)
    predicted = np.asarray(written.dataobj) > 0
    truth = _label_on_grid(made["label"], written.shape, written.affine)
    assert truth.sum() > 1000
    if case == "lps_las":  # a NIfTI input: the mask is written on the input's own grid
        image = nib.load(made["image"])
        assert written.shape == image.shape and np.allclose(written.affine, image.affine)
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice >= 0.99, dice


def test_training_labels_are_resized_onto_the_resized_image(tmp_path):
    """The label of a training slice covers what the image shows: torch's plain `nearest` samples the top-left
    of each cell, half an output pixel off the image's smooth resize at non-integer factors (Dice ~0.95)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    case = _lps_image_and_las_label(tmp_path)
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser["allow_non_ct"] = True  # a synthetic geometry probe, not a CT
    parser["slice_size"] = 64  # 150 x 130 voxels -> 64 x 64: factors 2.34 and 2.03
    data = Compose(parser.get_parsed_content("preprocessing_3d"))(case)
    shown, label = data["image"][0] > 0.5, data["label"][0] > 0.5
    assert label.shape == (64, 64, 12)
    dice = 2 * (shown & label).sum().item() / (shown.sum() + label.sum()).item()
    assert dice >= 0.99, dice
