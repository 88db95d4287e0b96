"""Training data that would silently mislead: hand-made splits that leak, unlabelled images that are not
CT, labelled volumes without a spleen. Each is a DataError or a warning that names the volumes."""

import json

import nibabel as nib
import numpy as np
import pytest

from bundle.checks import InputError
from bundle.data.datalist import DataError, load_or_create_datalist, read_pairs, spleen_free_volumes
from conftest import REPO, TRAIN, error_chain


def _hand_made(phantom_dir, tmp_path, **lists):
    pairs = read_pairs(dataset_dir=phantom_dir)
    split = {"teacher_train": pairs[:5], "validation": pairs[5:6], "test": pairs[6:], "student_train": pairs[:2]}
    split.update({key: [pairs[i] for i in indices] for key, indices in lists.items()})
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(split))
    return path, pairs


@pytest.mark.parametrize("lists, message, culprit", [
    ({"test": [6, 7, 0]}, r"in both \"teacher_train\" and \"test\"", 0),
    ({"validation": [5, 6]}, r"in both \"validation\" and \"test\"", 6),
    ({"validation": [4, 5]}, r"in both \"teacher_train\" and \"validation\"", 4),
    ({"student_train": [0, 5]}, r"\"student_train\" volume\(s\) .* are not in \"teacher_train\"", 5),
    ({"teacher_train": [0, 1, 2, 2]}, r"listed twice in \"teacher_train\"", 2),
], ids=["test-in-train", "val-in-test", "val-in-train", "student-outside", "duplicate"])
def test_a_hand_made_split_that_leaks_is_refused_naming_the_volumes(phantom_dir, tmp_path, lists, message, culprit):
    path, pairs = _hand_made(phantom_dir, tmp_path, **lists)
    with pytest.raises(DataError, match=message) as error:
        load_or_create_datalist(str(phantom_dir), str(path))
    assert pairs[culprit]["image"] in str(error.value)


def test_a_sound_hand_made_split_is_used(phantom_dir, tmp_path):
    path, pairs = _hand_made(phantom_dir, tmp_path)
    assert load_or_create_datalist(str(phantom_dir), str(path))["student_train"] == pairs[:2]


def _parsed(key, phantom_dir, tmp_path, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": str(REPO), "output_root": str(tmp_path), "dataset_dir": str(phantom_dir),
                   **overrides})
    return parser.get_parsed_content(key)


def test_unlabelled_images_get_the_image_checks_of_inference(phantom_dir, tmp_path, totalseg_dir):
    """The unlabelled dataset runs ``preprocessing_3d``: a truncated NIfTI is not read as zeros by another
    reader, and an image that is not a CT is refused (or let through with ``allow_non_ct``)."""
    from monai.transforms import Compose

    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes((totalseg_dir / "example_ct_sm.nii.gz").read_bytes()[:5000])
    mr_like = tmp_path / "mr_like.nii.gz"
    nib.save(nib.Nifti1Image((np.random.default_rng(0).random((32, 32, 8)) * 3000).astype(np.float32), np.eye(4)),
             mr_like)
    chain = Compose(_parsed("preprocessing_3d", phantom_dir, tmp_path, slice_size=32))
    for path, message in ((truncated, "is not a readable NIfTI file"), (mr_like, "holds no air")):
        with pytest.raises(Exception) as error:
            chain({"image": str(path)})
        assert message in error_chain(error.value) and str(path) in error_chain(error.value)
        assert any(isinstance(e, InputError) for e in _causes(error.value))
    allowed = Compose(_parsed("preprocessing_3d", phantom_dir, tmp_path, slice_size=32, allow_non_ct=True))
    assert allowed({"image": str(mr_like)})["image"].shape == (1, 32, 32, 8)


def _causes(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_labelled_volumes_without_the_spleen_are_counted_and_named(phantom_dir, tmp_path, caplog):
    datalist = load_or_create_datalist(str(phantom_dir), str(tmp_path / "datalist.json"))
    assert spleen_free_volumes(datalist["teacher_train"]) == 0
    empty_label = tmp_path / "empty_label.nii.gz"
    first = datalist["teacher_train"][0]
    label = nib.load(first["label"])
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine), empty_label)
    datalist["teacher_train"][0] = {"image": first["image"], "label": str(empty_label)}
    assert spleen_free_volumes(datalist["teacher_train"] + [{"image": first["image"]}]) == 1  # unlabelled: no count
    assert "empty_label.nii.gz" in caplog.text and "spleen-free" in caplog.text


def test_the_count_of_spleen_free_volumes_is_a_run_parameter(phantom_dir, tmp_path):
    params = _parsed("tracking_params", phantom_dir, tmp_path, slice_size=32, epochs=1)
    assert params["spleen_free_volumes"] == 0
