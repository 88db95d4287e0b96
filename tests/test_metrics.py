"""Per-volume metrics on masks whose answers are known, in millimetres, with the empty-mask conventions."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bundle.metrics import flops_per_slice, psnr, summarize, volume_metrics


def _cube(lo, hi, shape=(20, 20, 20)):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[lo:hi, lo:hi, lo:hi] = True
    return mask


def test_overlap_metrics_match_hand_counts():
    label = torch.zeros(10, 10, 10, dtype=torch.bool)
    label[:4] = True                      # 400 voxels
    pred = torch.zeros_like(label)
    pred[2:6] = True                      # 400 voxels, 200 shared
    m = volume_metrics(pred, label, spacing=(1, 1, 1))
    assert m["dice"] == pytest.approx(2 * 200 / 800)
    assert m["iou"] == pytest.approx(200 / 600)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)


def test_distances_are_in_millimetres():
    label, pred = _cube(5, 15), _cube(6, 16)  # shifted by one voxel on every axis
    one_mm = volume_metrics(pred, label, spacing=(1, 1, 1), tolerance_mm=0.5)
    three_mm = volume_metrics(pred, label, spacing=(3, 3, 3), tolerance_mm=0.5)
    assert three_mm["hd95_mm"] == pytest.approx(3 * one_mm["hd95_mm"])
    assert 0 < one_mm["hd95_mm"] <= math.sqrt(3) + 1e-6
    assert volume_metrics(pred, label, (1, 1, 1), tolerance_mm=2.0)["surface_dice"] == pytest.approx(1.0)
    assert volume_metrics(pred, label, (3, 3, 3), tolerance_mm=2.0)["surface_dice"] < 1.0


def test_identical_masks_are_perfect():
    m = volume_metrics(_cube(3, 9), _cube(3, 9), spacing=(0.8, 0.8, 2.5))
    assert m == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "surface_dice": 1.0, "hd95_mm": 0.0}


def test_empty_mask_conventions():
    empty, cube = torch.zeros(8, 8, 8, dtype=torch.bool), _cube(2, 5, (8, 8, 8))
    assert volume_metrics(empty, empty, (1, 1, 1))["dice"] == 1.0
    missed = volume_metrics(empty, cube, (1, 1, 1))
    assert (missed["dice"], missed["precision"], missed["recall"], missed["surface_dice"]) == (0.0, 1.0, 0.0, 0.0)
    assert math.isnan(missed["hd95_mm"])
    false_alarm = volume_metrics(cube, empty, (1, 1, 1))
    assert (false_alarm["precision"], false_alarm["recall"]) == (0.0, 1.0)


def test_summary_ignores_undefined_values_and_counts_them():
    rows = [{"dice": 0.5, "hd95_mm": 2.0}, {"dice": 1.0, "hd95_mm": float("nan")}, {"dice": 0.0, "hd95_mm": 4.0}]
    s = summarize(rows)
    assert s["dice"]["mean"] == pytest.approx(0.5) and s["dice"]["median"] == pytest.approx(0.5)
    assert s["dice"]["std"] == pytest.approx(0.5)
    assert s["hd95_mm"] == {"mean": 3.0, "std": pytest.approx(math.sqrt(2)), "median": 3.0, "n": 2, "undefined": 1}


def test_psnr_of_a_known_error():
    image = torch.zeros(1, 4, 4)
    assert psnr(image + 0.1, image) == pytest.approx(20.0)
    assert psnr(image, image) == math.inf


def test_flops_of_a_single_convolution():
    conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    assert flops_per_slice(conv, 16) == 2 * 16 * 16 * 4 * 9


def test_masks_on_different_grids_are_refused_not_reshaped():
    """Same voxel count, other shape: reshaping one onto the other gave a number, now a clear error."""
    with pytest.raises(ValueError, match=r"\(8, 10, 12\) and label \(12, 10, 8\) are on different grids"):
        volume_metrics(torch.ones(1, 8, 10, 12), torch.ones(1, 12, 10, 8), spacing=(1, 1, 1))


def _evaluate_items(items, out_dir):
    """Run the metrics handler in a real Ignite engine over pre-made evaluator outputs (one list per step)."""
    from ignite.engine import Engine

    from bundle.metrics import VolumeMetricsHandler

    handler = VolumeMetricsHandler(str(out_dir))
    engine = Engine(lambda engine, batch: batch)
    handler.attach(engine)
    engine.run([[item] for item in items])
    return handler


def _item(path, pred, label, affine=None):
    from monai.data import MetaTensor

    affine = torch.eye(4) if affine is None else affine
    meta = {"filename_or_obj": path}
    return {"image": MetaTensor(torch.zeros_like(label, dtype=torch.float32), affine=torch.eye(4), meta=dict(meta)),
            "pred": MetaTensor(pred.float(), affine=affine), "label": MetaTensor(label.float(), affine=torch.eye(4))}


def test_metrics_handler_refuses_a_prediction_on_another_grid(tmp_path):
    flipped = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    flipped[0, 3] = 19
    cube = _cube(3, 9)[None]
    with pytest.raises(ValueError, match=r"case '.*/a/ct.nii.gz'.*different grids.*ResampleToMatchd"):
        _evaluate_items([_item(str(tmp_path / "a/ct.nii.gz"), cube, cube, affine=flipped)], tmp_path / "out")


def test_case_ids_are_unique_within_the_split(tmp_path):
    cube = _cube(3, 9)[None]
    items = [_item(str(tmp_path / f"data/{case}/image.nii.gz"), cube, cube) for case in ("s01", "s02", "s03")]
    _evaluate_items(items, tmp_path / "out")
    cases = [line.split(",")[0] for line in (tmp_path / "out/metrics.csv").read_text().splitlines()[1:]]
    assert cases == ["s01/image.nii.gz", "s02/image.nii.gz", "s03/image.nii.gz"]


def test_validation_metrics_equal_the_per_volume_metrics_in_millimetres(phantom_dir, tmp_path):
    """Validation Dice and Surface Dice are `volume_metrics` averaged over volumes, each volume on its own
    anisotropic spacing (the tolerance used to be converted to pixels of the first volume, z ignored)."""
    import nibabel as nib
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    from conftest import REPO, TRAIN

    cases = []
    for name, zooms in (("a", (5.0, 5.0, 10.0)), ("b", (3.0, 3.0, 7.0))):  # same voxels, other spacings
        for key, folder in (("image", "imagesTr"), ("label", "labelsTr")):
            source = nib.load(sorted((phantom_dir / folder).glob("*.nii.gz"))[0])
            nib.save(nib.Nifti1Image(np.asarray(source.dataobj), np.diag([*zooms, 1.0])), tmp_path / f"{name}_{key}.nii.gz")
        cases.append({"image": str(tmp_path / f"{name}_image.nii.gz"), "label": str(tmp_path / f"{name}_label.nii.gz")})
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.resolve_macro_and_relative_ids()
    tolerance = 8.0  # between the in-plane (6.7 / 4 mm at 48 px) and the z spacings
    parser.update({"bundle_root": str(REPO), "output_root": str(tmp_path), "slice_size": 48,
                   "surface_dice_tolerance_mm": tolerance, "validate#dataset#data": cases, "device": torch.device("cpu"),
                   "amp": False, "student_def#channels": [4, 8], "student_def#bottleneck": 8})
    evaluator = parser.get_parsed_content("validate#evaluator")
    seen = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.extend(
        (item["pred"], item["label"]) for item in e.state.output))
    evaluator.run()
    expected = [volume_metrics(pred, label, [float(s) for s in label.pixdim], tolerance) for pred, label in seen]
    assert len(expected) == 2 and all(0 < m["surface_dice"] < 1 for m in expected)
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(np.mean([m["dice"] for m in expected]), abs=1e-6)
    assert evaluator.state.metrics["val_surface_dice"] == pytest.approx(
        np.mean([m["surface_dice"] for m in expected]), abs=1e-6)
