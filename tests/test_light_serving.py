"""The light serving path (``spleen-kd segment``): no MONAI, no PyTorch, and the masks of configs/inference.json."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bundle.serving.light import (InputError, LightSegmenter, from_orientation, mask_path, read_dicom_series,
                                  read_volume, to_orientation)
from conftest import FITTED_SIZE, bundle_run, config_files


def whole_resize(volume: np.ndarray, out_size, sigmas) -> np.ndarray:
    """The reference the light path's resizes reproduce bit for bit: one sparse product per axis over the
    whole volume, the largest reduction first (the MONAI path's order)."""
    from bundle import arrays

    out = volume
    axes = [a for a in range(volume.ndim) if out_size[a] != volume.shape[a] or sigmas[a] > 0]
    for axis in sorted(axes, key=lambda a: out_size[a] / volume.shape[a]):
        matrix = arrays.resize_weights(out.shape[axis], out_size[axis], sigmas[axis]).astype(np.float32)
        moved = np.moveaxis(out, axis, 0)
        product = matrix @ moved.reshape(moved.shape[0], -1)
        out = np.moveaxis(product.reshape(-1, *moved.shape[1:]), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def _dice(a, b) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


@pytest.fixture(scope="module")
def large_ct(totalseg_dir, tmp_path_factory):
    """A 512×512×24 CT in LPS voxel order (the real CT upsampled, with noise): the size of clinical slices,
    another axis order than RAS."""
    import torch
    import torch.nn.functional as F

    real = nib.load(totalseg_dir / "example_ct_sm.nii.gz")
    volume = torch.from_numpy(np.asarray(real.dataobj, dtype=np.float32))[None, None, :, :, ::1]
    big = F.interpolate(volume, size=(512, 512, 24), mode="trilinear", align_corners=False)[0, 0].numpy()
    big += np.random.default_rng(0).normal(0, 10, big.shape).astype(np.float32)
    spacing = np.array(real.header.get_zooms()[:3]) * np.array([122 / 512, 101 / 512, 30 / 24])
    lps = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    path = tmp_path_factory.mktemp("large") / "large_ct.nii.gz"
    nib.save(nib.Nifti1Image(np.round(big[::-1, ::-1]).astype(np.int16), lps), path)
    return path


def test_dicom_series_reads_as_monai_reads_it(totalseg_dir):
    from monai.transforms import LoadImage

    expected = LoadImage(reader="ITKReader", image_only=True)(str(totalseg_dir / "example_ct_dicom"))
    volume = read_dicom_series(totalseg_dir / "example_ct_dicom")
    assert volume.array.shape == tuple(expected.shape) == (512, 512, 20)
    np.testing.assert_allclose(volume.array, np.asarray(expected), atol=1e-3)
    np.testing.assert_allclose(volume.affine, np.asarray(expected.affine), atol=1e-4)


def test_orientation_round_trip_and_monai_agreement(totalseg_dir):
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    rng = np.random.default_rng(0)
    array = rng.random((5, 6, 7)).astype(np.float32)
    for affine in (np.diag([-1.0, -2.0, 3.0, 1.0]), np.array([[0, 0, 2, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])):
        oriented, transform = to_orientation(array, affine, "RAS")
        expected = Orientation("RAS")(MetaTensor(torch.from_numpy(array)[None], affine=torch.from_numpy(affine)))
        np.testing.assert_array_equal(oriented, np.asarray(expected[0]))
        np.testing.assert_array_equal(from_orientation(oriented, transform), array)


@pytest.mark.parametrize("case", ["nifti", "dicom", "large"])
def test_light_path_gives_the_masks_of_inference_json(case, fitted_student, totalseg_dir, large_ct, tmp_path):
    """The same model (S1-fast fitted to the real CT, its description says 64² slices) through
    configs/inference.json and through the light path: the same mask voxel for voxel, the same affine."""
    _, ckpt, _ = fitted_student
    source = {"nifti": totalseg_dir / "example_ct_sm.nii.gz", "dicom": totalseg_dir / "example_ct_dicom",
              "large": large_ct}[case]
    bundle_run("run", config_files("inference"), input_files=[str(source)], ckpt_path=str(ckpt),
               output_dir=str(tmp_path / "monai"), onnx_path=str(tmp_path / "model.onnx"))
    expected = nib.load(mask_path(str(source), tmp_path / "monai"))
    volume = read_volume(source)
    mask = LightSegmenter.for_checkpoint(ckpt).segment(volume)
    reference = np.asarray(expected.dataobj)
    assert mask.shape == reference.shape and mask.dtype == np.uint8
    assert 0 < reference.sum() < reference.size / 2, "the reference mask must be a real segmentation"
    differing = int((mask != reference).sum())
    # float rounding of the resize (SciPy's and PyTorch's sparse products sum in another order) may flip
    # a voxel whose probability is within 1e-6 of the threshold; none did on these volumes
    assert differing == 0 or _dice(mask > 0, reference > 0) >= 0.999, differing
    np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-5)


def test_segment_command_imports_neither_monai_nor_torch(fitted_student, totalseg_dir, tmp_path):
    _, ckpt, _ = fitted_student
    code = ("import sys; from bundle.cli import main; "
            f"code = main(['segment', {str(totalseg_dir / 'example_ct_sm.nii.gz')!r}, '-o', {str(tmp_path)!r}, "
            f"'--model', {str(ckpt)!r}, '--quiet']); "
            "print(code, 'torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0 False False"
    assert (tmp_path / "example_ct_sm_seg.nii.gz").is_file()


def test_a_bad_volume_in_a_list_is_reported_and_the_others_are_written(fitted_student, totalseg_dir, tmp_path):
    from bundle.cli import main

    _, ckpt, _ = fitted_student
    text = tmp_path / "inputs" / "notes.nii.gz"
    text.parent.mkdir()
    text.write_text("not an image")
    second = tmp_path / "inputs" / "second.nii.gz"
    second.write_bytes((totalseg_dir / "example_ct_sm.nii.gz").read_bytes())
    good = str(totalseg_dir / "example_ct_sm.nii.gz")
    code = main(["segment", good, str(text), str(second), "-o", str(tmp_path / "out"), "--model", str(ckpt)])
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["example_ct_sm_seg.nii.gz", "second_seg.nii.gz"]


def test_a_missing_onnx_model_is_refused_with_the_export_command(fitted_student, tmp_path):
    import shutil

    from bundle.serving import model_info

    _, ckpt, _ = fitted_student
    lonely = tmp_path / "model.pt"
    shutil.copy(ckpt, lonely)
    shutil.copy(ckpt.with_suffix(".json"), lonely.with_suffix(".json"))
    with pytest.raises(FileNotFoundError, match="spleen-kd export --ckpt .*model.pt"):
        LightSegmenter.for_checkpoint(lonely)
    assert model_info.read(lonely)["slice_size"] == FITTED_SIZE


def test_an_onnx_model_exported_from_other_weights_is_refused(fitted_student, tmp_path):
    import shutil

    from bundle.serving import model_info
    from bundle.serving.backend import export_onnx

    network, ckpt, _ = fitted_student
    served = tmp_path / "model.pt"
    shutil.copy(ckpt, served)
    shutil.copy(ckpt.with_suffix(".json"), served.with_suffix(".json"))
    described = model_info.read(served)
    export_onnx(network, served.with_suffix(".onnx"), FITTED_SIZE, description=described)
    assert LightSegmenter.for_checkpoint(served).info["checkpoint_sha256"] == described["checkpoint_sha256"]
    export_onnx(network, served.with_suffix(".onnx"), FITTED_SIZE,
                description={**described, "checkpoint_sha256": "0" * 64})
    with pytest.raises(ValueError, match="was not exported from"):
        LightSegmenter.for_checkpoint(served)


def test_an_unreadable_nifti_is_an_input_error(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + b"0" * 100)
    with pytest.raises(InputError, match="broken.nii.gz"):
        read_volume(broken)
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "absent.nii.gz")


def _slab_logits(depth: int, spleen: slice) -> np.ndarray:
    logits = np.full((depth, 1, 3, 3), -4.0, dtype=np.float32)
    logits[spleen, 0, 1, 1] = 3.0  # one confident voxel per spleen slice
    return logits


@pytest.mark.parametrize("tensor", [False, True], ids=["numpy", "torch"])
def test_located_pass_runs_the_slab_and_gives_its_slices_the_full_pass_logits(tensor):
    import torch

    from bundle.arrays import NO_SPLEEN_LOGIT, located_logits

    truth = _slab_logits(40, slice(10, 18))
    source = torch.from_numpy(truth) if tensor else truth
    seen = []

    def run(index):
        seen.extend(int(i) for i in index)
        return source[torch.as_tensor(index)] if tensor else source[index]

    logits, count = located_logits(40, run, threshold=0.5, stride=4)
    logits = logits.numpy() if tensor else logits
    # first pass: 0, 4, ..., 36; spleen seen at 12 and 16; slab 9..19 (the slices a spleen seen there may reach)
    assert count == len(seen) == len(set(seen)) == 10 + 9
    ran = sorted(set(range(0, 40, 4)) | set(range(9, 20)))
    np.testing.assert_array_equal(logits[ran], truth[ran])
    skipped = sorted(set(range(40)) - set(ran))
    assert (logits[skipped] == NO_SPLEEN_LOGIT).all()


def test_located_pass_segments_every_slice_when_the_first_pass_sees_no_spleen():
    from bundle.arrays import located_logits

    truth = _slab_logits(40, slice(13, 15))  # two slices, between the first pass's samples
    logits, count = located_logits(40, lambda i: truth[i], threshold=0.5, stride=4)
    assert count == 40
    np.testing.assert_array_equal(logits, truth)


@pytest.mark.parametrize("engine", ["light", "monai"])
def test_located_and_whole_volume_masks_agree_on_the_real_ct(engine, fitted_student, totalseg_dir, large_ct, tmp_path):
    from bundle.serving.segment import main

    _, ckpt, _ = fitted_student
    sources = [str(totalseg_dir / "example_ct_sm.nii.gz"), str(totalseg_dir / "example_ct_dicom"), str(large_ct)]
    for mode, flags in (("located", []), ("whole", ["--whole_volume"])):
        assert main([*sources, "-o", str(tmp_path / mode), "--model", str(ckpt), "--engine", engine, "--quiet",
                     *flags]) == 0
    for source in sources:
        located = np.asarray(nib.load(mask_path(source, tmp_path / "located")).dataobj)
        whole = np.asarray(nib.load(mask_path(source, tmp_path / "whole")).dataobj)
        assert whole.any() and _dice(located > 0, whole > 0) >= 0.99, source


@pytest.mark.parametrize("shape, out", [((128, 128, 30), (512, 512, 30)), ((48, 40, 12), (122, 30, 25))],
                         ids=["upsample", "mixed"])
def test_thresholded_resize_is_the_thresholded_whole_resize(shape, out):
    """The light path's inverse resize computes only the box that can reach the threshold: the mask must be
    the whole resize's, voxel for voxel, for a blob, for scattered hot voxels and for none."""
    from bundle import arrays

    rng = np.random.default_rng(0)
    probability = (rng.random(shape) * 0.4).astype(np.float32)
    probability[10:30, 8:20, 3:9] = rng.random((20, 12, 6)).astype(np.float32)
    probability[-1, 0, -1] = 0.9  # a corner voxel: the box reaches the edges
    for volume in (probability, np.minimum(probability, 0.45)):
        expected = (whole_resize(volume, out, [0.0, 0.0, 0.0]) >= 0.5).astype(np.uint8)
        np.testing.assert_array_equal(arrays.thresholded_resize(volume, out, 0.5), expected)
    assert arrays.thresholded_resize(probability, out, 0.5).sum() > 0


@pytest.mark.parametrize("layout", ["C", "F", "flipped"])
@pytest.mark.parametrize("shape, size", [((96, 80, 5), 48), ((40, 40, 3), 64), ((50, 70, 4), 50)])
def test_resize_slices_gives_resizes_floats_in_the_networks_layout(shape, size, layout):
    """The light path's slab-by-slab window and resize equals the whole-volume one bit for bit, for the
    memory layouts volumes arrive in (NIfTI: Fortran order; reoriented: flipped views)."""
    from bundle import arrays

    volume = np.random.default_rng(0).normal(40, 300, size=shape).astype(np.float32)
    volume = {"C": volume, "F": np.asfortranarray(volume), "flipped": volume[::-1, :, ::-1]}[layout]
    windowed = np.clip((volume - np.float32(-57)) / np.float32(221), 0.0, 1.0).astype(np.float32)
    out = (size, size, shape[2])
    sigmas = arrays.antialias_sigmas(windowed.shape, out)
    got = arrays.resize_slices(volume, size, sigmas, window=(-57, 164))
    assert got.flags.c_contiguous and got.shape == (shape[2], size, size)
    np.testing.assert_array_equal(got, np.moveaxis(whole_resize(windowed, out, sigmas), 2, 0))


def test_the_onnx_model_inference_json_exports_carries_its_checkpoints_description(fitted_student, totalseg_dir,
                                                                                    tmp_path):
    """inference.json exports the ONNX model when it is missing; the light path then checks that export
    against the checkpoint like one made by `spleen-kd export`."""
    import shutil

    from bundle.serving import model_info
    from bundle.serving.runtime import ONNX_DESCRIPTION, OnnxModel

    _, ckpt, _ = fitted_student
    served = tmp_path / "model.pt"
    shutil.copy(ckpt, served)
    shutil.copy(ckpt.with_suffix(".json"), served.with_suffix(".json"))
    bundle_run("run", config_files("inference"), input_files=[str(totalseg_dir / "example_ct_sm.nii.gz")],
               ckpt_path=str(served), output_dir=str(tmp_path / "monai"))
    described = json.loads(OnnxModel(served.with_suffix(".onnx")).metadata[ONNX_DESCRIPTION])
    expected = model_info.read(served)
    assert described["checkpoint_sha256"] == expected["checkpoint_sha256"] == model_info.sha256(served)
    assert described["network_def"] == expected["network_def"]
    assert LightSegmenter.for_checkpoint(served).info["checkpoint_sha256"] == expected["checkpoint_sha256"]


def test_the_benchmark_serves_a_described_checkpoint_with_its_own_description(fitted_student, tmp_path):
    """The benchmark once re-described every checkpoint for 256² slices, so its light-path rows ran the
    shipped 128² models at 4× their cost while its inference.json rows read the real description."""
    from bundle.benchmark import served_copy
    from bundle.serving import model_info

    _, ckpt, _ = fitted_student
    served = served_copy("S1-fast", ckpt, tmp_path / "copy")
    assert model_info.read(served)["slice_size"] == model_info.read(ckpt)["slice_size"] == FITTED_SIZE
    assert LightSegmenter.for_checkpoint(served).info["checkpoint_sha256"] == model_info.sha256(ckpt)
