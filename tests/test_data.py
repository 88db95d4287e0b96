"""Data: phantoms, reading and checking pairs, by-volume splits, bad input, real fixtures, download."""

import hashlib
import http.server
import json
import os
import re
import shutil
import tarfile
import threading
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.data.datalist import (DataError, check_pairs, load_or_create_datalist, read_pairs, split_by_volume,
                                  with_training_volumes)
from bundle.data.download import download_msd_spleen
from bundle.data.phantoms import make_phantom, make_phantom_dataset

SMALL = {"shape": (64, 64, 24), "spacing": (5.0, 5.0, 10.0)}


# Phantoms


def test_phantoms_are_deterministic_per_seed_and_differ_across_seeds(tmp_path):
    first, again, other = make_phantom(3, **SMALL), make_phantom(3, **SMALL), make_phantom(4, **SMALL)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])
    for name in ("a", "b"):
        make_phantom_dataset(tmp_path / name, cases=2, seed=7, **SMALL)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_phantoms_look_like_abdominal_ct_with_a_varying_spleen():
    cases = [make_phantom((0, case), shape=(96, 96, 32), spacing=(10 / 3, 10 / 3, 7.5)) for case in range(6)]
    spleen_sizes = [int(label.sum()) for _, label, _ in cases]
    assert min(spleen_sizes) > 0 and max(spleen_sizes) > 1.8 * min(spleen_sizes)
    for image, label, affine in cases:
        assert image.dtype == np.int16 and label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
        assert image[0, 0, 0] < -900 and image.max() > 400  # air around the body, bone
        assert np.mean((image > -150) & (image < -60)) > 0.02  # fat
        assert 60 < np.median(image[label > 0]) < 150  # enhanced spleen, in HU
        assert np.allclose(np.diag(affine)[:3], (10 / 3, 10 / 3, 7.5))
        centre = np.argwhere(label).mean(axis=0) / np.array(label.shape)
        assert centre[0] < 0.4 and centre[1] < 0.55  # patient's left (low x in RAS+), posterior half
        slices = np.flatnonzero(label.any(axis=(0, 1)))
        assert 0 < len(slices) < label.shape[2]  # a craniocaudal extent, not a cylinder


def test_phantom_dataset_is_in_the_msd_layout(phantom_dir):
    content = json.loads((phantom_dir / "dataset.json").read_text())
    assert content["modality"] == {"0": "CT"} and content["labels"] == {"0": "background", "1": "spleen"}
    assert content["numTraining"] == len(content["training"]) == 8 and content["test"] == []
    assert content["training"][3] == {"image": "./imagesTr/spleen_3.nii.gz", "label": "./labelsTr/spleen_3.nii.gz"}
    image = nib.load(phantom_dir / "imagesTr" / "spleen_3.nii.gz")
    assert image.get_data_dtype() == np.int16 and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert image.header.get_zooms() == (5.0, 5.0, 10.0)
    info = check_pairs(read_pairs(dataset_dir=phantom_dir))
    assert all(case["shape"] == (64, 64, 24) and case["spleen_voxels"] > 0 for case in info)


def test_phantoms_never_overwrite_another_dataset(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "Spleen", "training": []}))
    with pytest.raises(DataError, match=r"dataset.json' describes another dataset \('Spleen'\)"):
        make_phantom_dataset(tmp_path, cases=1, **SMALL)
    assert not (tmp_path / "imagesTr").exists()


# Splits


def _fake_pairs(n):
    return [{"image": f"/data/imagesTr/spleen_{i}.nii.gz", "label": f"/data/labelsTr/spleen_{i}.nii.gz"}
            for i in range(n)]


def _images(split):
    return {key: {pair["image"] for pair in pairs} for key, pairs in split.items()}


def test_split_is_by_volume_deterministic_and_order_free():
    pairs = _fake_pairs(41)
    split = split_by_volume(pairs, seed=1)
    assert split == split_by_volume(list(reversed(pairs)), seed=1)
    assert split != split_by_volume(pairs, seed=2)
    images = _images(split)
    assert {key: len(value) for key, value in images.items()} == {
        "teacher_train": 27, "validation": 6, "test": 8, "student_train": 14}
    assert not images["teacher_train"] & images["validation"] and not images["teacher_train"] & images["test"]
    assert not images["validation"] & images["test"]
    assert images["teacher_train"] | images["validation"] | images["test"] == {p["image"] for p in pairs}
    assert images["student_train"] < images["teacher_train"]


def test_student_subsets_are_nested_and_leave_validation_and_test_alone():
    pairs = _fake_pairs(20)
    half, most, full = (_images(split_by_volume(pairs, seed=3, student_fraction=f)) for f in (0.5, 0.75, 1.0))
    assert half["student_train"] < most["student_train"] < full["student_train"] == full["teacher_train"]
    assert half["validation"] == full["validation"] and half["test"] == full["test"]


def test_small_sets_keep_one_volume_per_split():
    split = split_by_volume(_fake_pairs(4), seed=0, val_fraction=0.1, test_fraction=0.1, student_fraction=0.1)
    assert [len(split[key]) for key in ("teacher_train", "validation", "test", "student_train")] == [2, 1, 1, 1]
    assert split_by_volume(_fake_pairs(4), seed=0, val_fraction=0, test_fraction=0)["validation"] == []


@pytest.mark.parametrize("n", [0, 2])
def test_too_few_volumes_for_the_fractions(n):
    with pytest.raises(DataError, match=rf"{n} volumes are too few .* at least 3 are needed.*`val_fraction`"):
        split_by_volume(_fake_pairs(n), val_fraction=0.15, test_fraction=0.2)


@pytest.mark.parametrize("fractions, key", [({"val_fraction": -0.1}, "val_fraction"),
                                            ({"student_fraction": 0.0}, "student_fraction"),
                                            ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction")])
def test_fractions_out_of_range_are_named(fractions, key):
    with pytest.raises(DataError, match=key):
        split_by_volume(_fake_pairs(10), **fractions)


def test_more_training_volumes_leave_validation_and_test_alone():
    split = split_by_volume(_fake_pairs(20), seed=3, student_fraction=0.5)
    more = [{"image": f"/more/imagesTr/spleen_{i}.nii.gz", "label": f"/more/labelsTr/spleen_{i}.nii.gz"}
            for i in range(20, 30)]
    grown = _images(with_training_volumes(split, more, seed=3, student_fraction=0.5))
    before = _images(split)
    assert grown["validation"] == before["validation"] and grown["test"] == before["test"]
    assert grown["teacher_train"] == before["teacher_train"] | {p["image"] for p in more}
    assert grown["student_train"] > before["student_train"] and grown["student_train"] < grown["teacher_train"]
    assert len(grown["student_train"] - before["student_train"]) == 5  # the same fraction of the new volumes
    assert _images(with_training_volumes(split, more, seed=3, student_fraction=1.0))["student_train"] >= {
        p["image"] for p in more}


def test_more_training_volumes_may_not_repeat_a_volume_of_the_split():
    split = split_by_volume(_fake_pairs(20), seed=0)
    again = split["test"][:1] + [{"image": "/more/a.nii.gz", "label": "/more/a_label.nii.gz"}]
    with pytest.raises(DataError, match=r"1 of the added training volumes .*spleen_\d+\.nii\.gz.* already"):
        with_training_volumes(split, again, seed=0, student_fraction=0.5)


# The datalist file


def test_datalist_is_written_reused_and_remade_when_parameters_change(phantom_dir, tmp_path):
    path = tmp_path / "eval" / "splits" / "datalist.json"
    first = load_or_create_datalist(str(phantom_dir), str(path), seed=0)
    written = json.loads(path.read_text())
    assert [name.name for name in path.parent.iterdir()] == ["datalist.json"]  # no temporary file left
    assert written["params"]["seed"] == 0 and written["params"]["source"] == str(phantom_dir / "dataset.json")
    assert written["teacher_train"] == first["teacher_train"]
    assert len(written["volumes"]) == 8 and all(Path(p["image"]).is_absolute() for p in first["test"])
    path.write_text(json.dumps({**written, "test": written["test"][:1]}))  # a marker that survives reuse
    assert len(load_or_create_datalist(str(phantom_dir), str(path), seed=0)["test"]) == 1
    remade = load_or_create_datalist(str(phantom_dir), str(path), seed=5)
    assert json.loads(path.read_text())["params"]["seed"] == 5 and len(remade["test"]) == 2


def test_datalist_is_remade_when_the_source_changes(phantom_dir, tmp_path):
    msd = tmp_path / "msd"
    shutil.copytree(phantom_dir, msd)
    path = tmp_path / "datalist.json"
    assert len(load_or_create_datalist(str(msd), str(path))["volumes"]) == 8
    content = json.loads((msd / "dataset.json").read_text())
    content["training"] = content["training"][:6]
    (msd / "dataset.json").write_text(json.dumps(content))
    assert len(load_or_create_datalist(str(msd), str(path))["volumes"]) == 6


def test_a_hand_made_split_file_is_used_and_kept(phantom_dir, tmp_path):
    pairs = read_pairs(dataset_dir=phantom_dir)
    path = tmp_path / "mine" / "splits.json"
    path.parent.mkdir()
    relative = [{key: os.path.relpath(pair[key], path.parent) for key in ("image", "label")} for pair in pairs]
    own = {"teacher_train": relative[:5], "validation": relative[5:6], "test": relative[6:],
           "student_train": relative[:2]}
    path.write_text(json.dumps(own))
    split = load_or_create_datalist(str(phantom_dir), str(path))
    assert split["test"] == pairs[6:] and json.loads(path.read_text()) == own
    path.write_text(json.dumps({"name": "not a split"}))
    with pytest.raises(DataError, match=r"splits.json' \(key `datalist_file`\) exists but holds neither"):
        load_or_create_datalist(str(phantom_dir), str(path))


@pytest.mark.parametrize("wrapped", [False, True], ids=["list", "training-dict"])
def test_any_user_datalist_of_pairs_works(phantom_dir, tmp_path, wrapped):
    folder = tmp_path / "lists"
    folder.mkdir()
    entries = [{"image": f"../phantoms/imagesTr/spleen_{i}.nii.gz", "label": f"../phantoms/labelsTr/spleen_{i}.nii.gz"}
               for i in range(5)]
    shutil.copytree(phantom_dir, tmp_path / "phantoms")
    own = folder / "pairs.json"
    own.write_text(json.dumps({"training": entries} if wrapped else entries))
    split = load_or_create_datalist(None, str(tmp_path / "dl.json"), source_datalist=str(own))
    listed = {pair["image"] for key in ("teacher_train", "validation", "test") for pair in split[key]}
    assert listed == {str(tmp_path / "phantoms" / "imagesTr" / f"spleen_{i}.nii.gz") for i in range(5)}


# Bad input, each named in its error


@pytest.mark.parametrize("problem, message", [
    ("missing_folder", r"dataset folder '.*nowhere' does not exist; pass --dataset_dir"),
    ("missing_json", r"msd/dataset.json' is missing.*--dataset_dir.*--download.*spleen-kd synthesize"),
    ("no_label_key", r"image './imagesTr/spleen_2.nii.gz' \(entry 2 .*dataset.json'\) has no label"),
    ("label_file_gone", r"label '.*labelsTr/spleen_1.nii.gz' \(entry 1 .*\) does not exist"),
    ("duplicate", r"image '.*spleen_0.nii.gz' is listed twice"),
])
def test_missing_data_is_named(phantom_dir, tmp_path, problem, message):
    msd = tmp_path / "msd"
    shutil.copytree(phantom_dir, msd)
    content = json.loads((msd / "dataset.json").read_text())
    if problem == "missing_folder":
        msd = tmp_path / "nowhere"
    elif problem == "missing_json":
        (msd / "dataset.json").unlink()
    elif problem == "no_label_key":
        del content["training"][2]["label"]
    elif problem == "label_file_gone":
        (msd / content["training"][1]["label"]).unlink()
    else:
        content["training"].append(content["training"][0])
    if msd.is_dir() and (msd / "dataset.json").is_file():
        (msd / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match=message):
        read_pairs(dataset_dir=msd)


def _pair(folder, image, label, label_affine=None):
    paths = {}
    for key, array, affine in (("image", image, np.eye(4)), ("label", label, label_affine)):
        paths[key] = str(folder / f"case_{key}.nii.gz")
        nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), paths[key])
    return paths


def test_shape_mismatch_names_both_files(tmp_path):
    pair = _pair(tmp_path, np.zeros((8, 8, 4), np.int16), np.ones((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match=r"case_image.nii.gz' \(8, 8, 4\) and label '.*case_label.nii.gz' "
                                        r"\(8, 8, 5\) disagree in shape"):
        check_pairs([pair])


def test_shapes_are_compared_in_ras_order(tmp_path):
    """A label stored z-first with an affine saying so is on the image's grid."""
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    pair = _pair(tmp_path, np.zeros((8, 7, 4), np.int16), np.ones((4, 7, 8), np.uint8), label_affine=swap)
    assert check_pairs([pair])[0]["shape"] == (8, 7, 4)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 4, 2)], ids=["2D", "4D"])
def test_volumes_must_be_3d(tmp_path, shape):
    pair = _pair(tmp_path, np.zeros(shape, np.int16), np.ones(shape, np.uint8))
    with pytest.raises(DataError, match=rf"image '.*case_image.nii.gz' has shape {re.escape(str(shape))}, "
                                        rf"{len(shape)}D given"):
        check_pairs([pair])


def test_truncated_or_garbage_files_are_named(tmp_path):
    image = np.random.default_rng(0).normal(0, 100, size=(32, 32, 16)).astype(np.int16)
    pair = _pair(tmp_path, image, np.ones((32, 32, 16), np.uint8))
    data = Path(pair["image"]).read_bytes()
    Path(pair["image"]).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=r"cannot read '.*case_image.nii.gz' .*truncated"):
        check_pairs([pair])
    Path(pair["label"]).write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot read '.*case_label.nii.gz'"):
        check_pairs([{**pair, "image": pair["label"]}])


def test_labels_without_the_spleen_value_anywhere(tmp_path):
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:4, 2:4, 1] = 5
    pair = _pair(tmp_path, np.zeros((8, 8, 4), np.int16), label)
    with pytest.raises(DataError, match=r"no voxel equals label_value=1 in any of the 1 label maps "
                                        r"\(values seen: \[0, 5\]\); set `label_value`"):
        check_pairs([pair], label_value=1)
    assert check_pairs([pair], label_value=5)[0]["spleen_voxels"] == 4
    assert check_pairs([pair], label_value=1, require_spleen=False)[0]["spleen_voxels"] == 0


# Real CT fixtures


def test_real_ct_with_a_totalsegmentator_label_map(totalseg_dir):
    pair = {"image": str(totalseg_dir / "example_ct_sm.nii.gz"), "label": str(totalseg_dir / "example_seg.nii.gz")}
    case, = check_pairs([pair], label_value=1)
    assert case["shape"] == (122, 101, 30) and case["spleen_voxels"] == 9452 and case["orientation"] == "RAS"
    with pytest.raises(DataError, match=r"label_value=200 .*values seen: \[0, 1, 2, .*5, "):
        check_pairs([pair], label_value=200)


def test_real_dicom_series_against_its_label(totalseg_dir):
    pair = {"image": str(totalseg_dir / "example_ct_dicom"), "label": str(totalseg_dir / "example_seg_dicom.nii.gz")}
    case, = check_pairs([pair], label_value=1)
    assert case["shape"] == (512, 512, 20) and case["spleen_voxels"] > 0
    assert case["spacing"] == pytest.approx((0.9766, 0.9766, 2.0), abs=1e-3)
    assert case["orientation"] == "LPS"  # ITK's DICOM grid; the label NIfTI is LAS, RAS reorientation aligns them


# Preprocessing (configs/train.json#preprocessing_3d), on volumes whose answer is known


def _preprocess(case: dict, slice_size: int) -> dict:
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from conftest import TRAIN

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser["slice_size"] = slice_size
    parser["allow_non_ct"] = True  # these volumes test geometry and windows, not whether they look like CT
    return Compose(parser.get_parsed_content("preprocessing_3d"))(case)


def _hu_volume(tmp_path, name, hu, affine=None):
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(hu.astype(np.int16), np.eye(4) if affine is None else affine), path)
    return str(path)


def test_hu_window_maps_its_ends_to_0_and_1_and_clips_without_volume_max_scaling(tmp_path):
    hu = np.full((16, 16, 4), 40, dtype=np.int16)
    hu[0, :4, 0] = [-57, 164, -1000, 53]  # window ends, air, a soft-tissue value
    label = np.zeros_like(hu, dtype=np.uint8)
    label[4:8, 4:8, :] = 1
    case = {"image": _hu_volume(tmp_path, "ct", hu), "label": _hu_volume(tmp_path, "seg", label)}
    image = _preprocess(case, slice_size=16)["image"][0]
    assert image[0, :4, 0].tolist() == pytest.approx([0.0, 1.0, 0.0, (53 + 57) / 221], abs=1e-6)
    assert image.max().item() == pytest.approx(1.0) and image.min().item() == pytest.approx(0.0)
    bright = hu.copy()
    bright[15, 15, 3] = 3000  # metal: clipped to 1, and nothing else changes (no scaling by the volume max)
    case["image"] = _hu_volume(tmp_path, "ct_metal", bright)
    with_metal = _preprocess(case, slice_size=16)["image"][0]
    assert with_metal[15, 15, 3].item() == pytest.approx(1.0)
    with_metal[15, 15, 3] = image[15, 15, 3]
    assert torch.equal(with_metal, image)


def test_the_pipeline_names_both_files_of_a_label_on_another_grid(tmp_path):
    """Data that reaches train.json without ``check_pairs`` (MONAI Label's datastore, a datalist given
    to the workflow directly) is checked in the pipeline: the error names both files instead of a
    tensor-size error from the slicing; a label stored in another axis order that the reorientation
    aligns, and a volume without a label (the unlabelled ones of KD), pass."""
    pair = _pair(tmp_path, np.zeros((8, 8, 4), np.int16), np.ones((8, 8, 5), np.uint8))
    with pytest.raises(Exception) as raised:
        _preprocess(dict(pair), slice_size=8)
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    data_errors = [e for e in chain if isinstance(e, DataError)]
    assert data_errors, f"no DataError in {[type(e).__name__ for e in chain]}"
    assert re.search(r"case_image.nii.gz' \(8, 8, 4\) and label '.*case_label.nii.gz' \(8, 8, 5\) disagree",
                     str(data_errors[0]))
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    aligned = _pair(tmp_path, np.zeros((8, 7, 4), np.int16), np.ones((4, 7, 8), np.uint8), label_affine=swap)
    assert _preprocess(dict(aligned), slice_size=8)["label"].shape == (1, 8, 8, 4)
    assert "label" not in _preprocess({"image": pair["image"]}, slice_size=8)


def test_a_non_ras_input_ends_in_ras(tmp_path):
    ras = np.zeros((12, 10, 4), dtype=np.int16)
    ras[8:11, 1:3, 1] = 164  # near +x (right) and -y (posterior) in RAS voxel order
    lps = np.ascontiguousarray(ras[::-1, ::-1])
    lps_affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    lps_affine[:2, 3] = (11 * 2.0, 9 * 2.0)  # voxel (0, 0) of the LPS file is voxel (11, 9) of the RAS grid
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")
    label = (lps > 0).astype(np.uint8)
    out = _preprocess({"image": _hu_volume(tmp_path, "lps", lps, lps_affine),
                       "label": _hu_volume(tmp_path, "lps_seg", label, lps_affine)}, slice_size=12)
    image, seg = out["image"], out["label"]
    assert nib.aff2axcodes(np.asarray(image.affine)) == ("R", "A", "S")
    expected = torch.nn.functional.interpolate(torch.tensor(ras > 0, dtype=torch.float32)[None, None],
                                               size=(12, 12, 4), mode="nearest-exact")[0, 0]
    assert torch.equal(seg[0] > 0.5, expected > 0.5)
    assert (image[0] > 0.5).sum() > 0 and torch.equal(image[0] > 0.5, seg[0] > 0.5)


# Download, against a real HTTP server on loopback


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def archive_server(phantom_dir, tmp_path):
    """Serve ``Task09_Spleen.tar`` (the phantoms) over HTTP on 127.0.0.1; yield its URL and MD5."""
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "Task09_Spleen.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(phantom_dir, arcname="Task09_Spleen")
    handler = partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/Task09_Spleen.tar"
    yield url, hashlib.md5(archive.read_bytes()).hexdigest()
    server.shutdown()
    server.server_close()


def test_download_extracts_a_verified_archive(archive_server, tmp_path):
    url, md5 = archive_server
    root = tmp_path / "data"
    root.mkdir()
    (root / "Task09_Spleen.tar.part").write_bytes(b"left over from an interrupted run")
    target = download_msd_spleen(root, url=url, md5=md5)
    assert target == root / "Task09_Spleen" and len(read_pairs(dataset_dir=target)) == 8
    assert sorted(p.name for p in root.iterdir()) == ["Task09_Spleen", "Task09_Spleen.tar"]
    assert download_msd_spleen(root, url="http://127.0.0.1:9/gone", md5=md5) == target  # nothing fetched again


def test_download_with_a_wrong_checksum_leaves_nothing_that_looks_complete(archive_server, tmp_path):
    url, md5 = archive_server
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"did not match md5 0{32} \(got [0-9a-f]{32}\); it was deleted"):
        download_msd_spleen(root, url=url, md5="0" * 32)
    assert list(root.iterdir()) == []
    assert (download_msd_spleen(root, url=url, md5=md5) / "dataset.json").is_file()  # a rerun works


def test_download_errors_are_clear(archive_server, tmp_path):
    url, md5 = archive_server
    with pytest.raises(DataError, match=r"could not download '.*/missing.tar' \(HTTP Error 404"):
        download_msd_spleen(tmp_path / "a", url=url.replace("Task09_Spleen.tar", "missing.tar"), md5=md5)
    (tmp_path / "b" / "Task09_Spleen" / "imagesTr").mkdir(parents=True)
    with pytest.raises(DataError, match=r"Task09_Spleen' exists but has no dataset.json"):
        download_msd_spleen(tmp_path / "b", url=url, md5=md5)
