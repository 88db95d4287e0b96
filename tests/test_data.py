"""Data: phantoms, reading and checking pairs, by-volume splits, bad input, real fixtures, download."""

import hashlib
import http.server
import json
import shutil
import tarfile
import threading
from functools import partial

import nibabel as nib
import numpy as np
import pytest

from bundle.data.datalist import (DataError, check_pairs, load_or_create_datalist, read_pairs,
                                  split_by_volume)
from bundle.data.download import download_msd_spleen
from bundle.data.phantoms import make_phantom, make_phantom_dataset

SMALL = dict(shape=(48, 48, 16), spacing=(6.0, 6.0, 12.0))


def test_phantoms_are_deterministic_per_seed_and_vary_across_seeds():
    a, b, c = make_phantom(3, **SMALL), make_phantom(3, **SMALL), make_phantom(4, **SMALL)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_phantoms_look_like_abdominal_ct_with_a_varying_spleen():
    volumes = [make_phantom(seed) for seed in range(6)]
    spleen_sizes = [int(label.sum()) for _, label, _ in volumes]
    assert all(size > 0 for size in spleen_sizes) and len(set(spleen_sizes)) == 6
    assert max(spleen_sizes) > 2 * min(spleen_sizes)
    image, label, affine = volumes[0]
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert image.min() <= -1000 and image.max() > 300  # air and bone
    assert 0 < np.median(image[label > 0]) < 250  # soft tissue, in HU
    assert np.allclose(np.diag(affine)[:3], (2.5, 2.5, 5.0))
    # the spleen lies on the patient's left (RAS+: low x)
    assert np.argwhere(label)[:, 0].mean() < image.shape[0] / 2


def test_phantom_dataset_is_in_the_msd_layout(phantom_dir):
    content = json.loads((phantom_dir / "dataset.json").read_text())
    assert content["labels"] == {"0": "background", "1": "spleen"} and content["numTraining"] == 8
    pairs = read_pairs(dataset_dir=phantom_dir)
    assert len(pairs) == 8 and all(p["image"].endswith(".nii.gz") for p in pairs)
    info = check_pairs(pairs)
    assert all(case["shape"] == (64, 64, 24) for case in info)


def test_split_is_by_volume_deterministic_and_nested(phantom_dir):
    pairs = read_pairs(dataset_dir=phantom_dir)
    split = split_by_volume(pairs, seed=1, val_fraction=0.15, test_fraction=0.25, student_fraction=0.5)
    assert split == split_by_volume(list(reversed(pairs)), seed=1, val_fraction=0.15, test_fraction=0.25)
    images = {key: {p["image"] for p in split[key]} for key in split}
    assert not images["teacher_train"] & images["validation"] and not images["teacher_train"] & images["test"]
    assert not images["validation"] & images["test"]
    assert len(images["teacher_train"]) + len(images["validation"]) + len(images["test"]) == 8
    assert images["student_train"] <= images["teacher_train"]
    assert len(images["student_train"]) == round(len(images["teacher_train"]) * 0.5)
    assert split != split_by_volume(pairs, seed=2, val_fraction=0.15, test_fraction=0.25)


def test_datalist_file_is_reused_and_remade_when_parameters_change(phantom_dir, tmp_path):
    path = tmp_path / "splits" / "datalist.json"
    first = load_or_create_datalist(str(phantom_dir), str(path), seed=0)
    written = json.loads(path.read_text())
    assert written["params"]["seed"] == 0 and written["teacher_train"] == first["teacher_train"]
    path.write_text(json.dumps({**written, "test": written["test"][:1]}))  # a marker: reuse keeps it
    assert len(load_or_create_datalist(str(phantom_dir), str(path), seed=0)["test"]) == 1
    remade = load_or_create_datalist(str(phantom_dir), str(path), seed=5)
    assert json.loads(path.read_text())["params"]["seed"] == 5 and len(remade["test"]) == len(first["test"])


def test_any_user_datalist_of_pairs_works(phantom_dir, tmp_path):
    pairs = read_pairs(dataset_dir=phantom_dir)
    own = tmp_path / "mine.json"
    own.write_text(json.dumps([{"image": p["image"], "label": p["label"]} for p in pairs[:5]]))
    split = load_or_create_datalist(None, str(tmp_path / "dl.json"), source_datalist=str(own))
    assert sum(len(split[k]) for k in ("teacher_train", "validation", "test")) == 5


def _copy_msd(phantom_dir, tmp_path):
    target = tmp_path / "msd"
    shutil.copytree(phantom_dir, target)
    return target


@pytest.mark.parametrize("problem, message", [
    ("missing_folder", "does not exist"),
    ("missing_json", "dataset.json' is missing"),
    ("no_label_key", "has no label"),
    ("label_file_gone", "does not exist"),
])
def test_missing_data_is_named(phantom_dir, tmp_path, problem, message):
    msd = _copy_msd(phantom_dir, tmp_path)
    content = json.loads((msd / "dataset.json").read_text())
    if problem == "missing_folder":
        msd = tmp_path / "nowhere"
    elif problem == "missing_json":
        (msd / "dataset.json").unlink()
    elif problem == "no_label_key":
        del content["training"][2]["label"]
        (msd / "dataset.json").write_text(json.dumps(content))
    else:
        (msd / content["training"][1]["label"]).unlink()
    with pytest.raises(DataError, match=message) as error:
        read_pairs(dataset_dir=msd)
    assert str(msd) in str(error.value) or "spleen_" in str(error.value)


def _pair(tmp_path, image, label, name="case"):
    paths = {}
    for key, array in (("image", image), ("label", label)):
        paths[key] = str(tmp_path / f"{name}_{key}.nii.gz")
        nib.save(nib.Nifti1Image(array, np.eye(4)), paths[key])
    return paths


def test_shape_mismatch_names_both_files(tmp_path):
    pair = _pair(tmp_path, np.zeros((8, 8, 4), np.int16), np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match=r"case_image.*\(8, 8, 4\).*case_label.*\(8, 8, 5\).*disagree"):
        check_pairs([pair])


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 4, 2)], ids=["2D", "4D"])
def test_volumes_must_be_3d(tmp_path, shape):
    pair = _pair(tmp_path, np.zeros(shape, np.int16), np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match=rf"case_image.*{len(shape)}D given"):
        check_pairs([pair])


def test_truncated_nifti_is_named(tmp_path):
    pair = _pair(tmp_path, np.random.default_rng(0).normal(size=(32, 32, 16)).astype(np.float32),
                 np.ones((32, 32, 16), np.uint8))
    data = open(pair["image"], "rb").read()
    open(pair["image"], "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read '.*case_image.nii.gz'.*truncated"):
        check_pairs([pair])


def test_labels_without_the_spleen_value_anywhere(tmp_path):
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:4, 2:4, 1] = 5
    pair = _pair(tmp_path, np.zeros((8, 8, 4), np.int16), label)
    with pytest.raises(DataError, match=r"no voxel equals label_value=1 in any of the 1 label maps \(values seen: \[0, 5\]\)"):
        check_pairs([pair], label_value=1)
    assert check_pairs([pair], label_value=5)[0]["spleen_voxels"] == 4


def test_too_few_volumes_for_the_fractions(phantom_dir):
    pairs = read_pairs(dataset_dir=phantom_dir)[:2]
    with pytest.raises(DataError, match="2 volumes are too few.*Lower the fractions"):
        split_by_volume(pairs, val_fraction=0.3, test_fraction=0.3)


def test_real_ct_with_a_totalsegmentator_label_map(totalseg):
    pair = {"image": str(totalseg / "example_ct_sm.nii.gz"), "label": str(totalseg / "example_seg.nii.gz")}
    info = check_pairs([pair], label_value=1)
    assert info[0]["shape"] == (122, 101, 30) and info[0]["spleen_voxels"] == 9452
    with pytest.raises(DataError, match="label_value=200"):
        check_pairs([pair], label_value=200)


def test_real_dicom_series_against_its_label(totalseg):
    pair = {"image": str(totalseg / "example_ct_dicom"), "label": str(totalseg / "example_seg_dicom.nii.gz")}
    info = check_pairs([pair], label_value=1)
    assert info[0]["shape"] == (512, 512, 20) and info[0]["spleen_voxels"] > 0
    assert info[0]["spacing"][:2] == pytest.approx((0.977, 0.977), abs=1e-3)


@pytest.fixture
def archive_server(phantom_dir, tmp_path):
    """An HTTP server on loopback serving a Task09_Spleen tar made of phantoms."""
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "Task09_Spleen.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(phantom_dir, arcname="Task09_Spleen")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/Task09_Spleen.tar", hashlib.md5(archive.read_bytes()).hexdigest()
    server.shutdown()


def test_download_from_a_loopback_server(archive_server, tmp_path):
    url, md5 = archive_server
    target = download_msd_spleen(tmp_path / "data", url=url, md5=md5)
    assert target == tmp_path / "data" / "Task09_Spleen"
    assert len(read_pairs(dataset_dir=target)) == 8
    assert download_msd_spleen(tmp_path / "data", url="http://127.0.0.1:9/unused", md5=md5) == target  # no refetch


def test_download_with_a_wrong_checksum_leaves_nothing_that_looks_complete(archive_server, tmp_path):
    url, _ = archive_server
    with pytest.raises(DataError, match="did not match md5"):
        download_msd_spleen(tmp_path / "data", url=url, md5="0" * 32)
    assert not (tmp_path / "data" / "Task09_Spleen").exists()
    assert not (tmp_path / "data" / "Task09_Spleen.tar").exists()
