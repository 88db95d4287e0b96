"""Distillation on volumes without labels: which volumes are used, that a run trains on images whose
label files do not exist, and that the segmentation term never sees an unlabelled slice."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, run
from monai.utils import set_determinism

from bundle.data.datalist import DataError, load_or_create_datalist
from bundle.data.slicing import unlabeled_images
from bundle.networks import FeatureUNet

REPO = Path(__file__).resolve().parents[1]
TEACHER = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "channels": [4, 8],
           "bottleneck": 8, "convs_per_block": 1, "reconstruction": True}
STUDENT = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "channels": [4, 8],
           "bottleneck": 8, "convs_per_block": 1}


@pytest.fixture(scope="module")
def setup(phantom_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabelled")
    datalist = load_or_create_datalist(str(phantom_dir), str(root / "datalist.json"))
    images = root / "images_only"
    images.mkdir()
    for pair in datalist["teacher_train"]:  # images copied without their labels
        shutil.copy(pair["image"], images / Path(pair["image"]).name)
    torch.save(FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True).state_dict(), root / "teacher.pt")
    common = dict(bundle_root=str(root), dataset_dir=str(phantom_dir), datalist_file=str(root / "datalist.json"),
                  slice_size=32, epochs=2, val_interval=1, slices_per_volume=4, sw_batch_size=32,
                  teacher_def=TEACHER, student_def=STUDENT, amp=False, teacher_ckpt=str(root / "teacher.pt"),
                  use_unlabeled=True, unlabeled_source=str(images))
    return root, datalist, images, common


def test_default_unlabelled_volumes_are_the_teachers_outside_the_student_subset(setup):
    _, datalist, _, _ = setup
    found = [e["image"] for e in unlabeled_images(datalist)]
    labelled = {p["image"] for p in datalist["student_train"]}
    assert found and set(found) == {p["image"] for p in datalist["teacher_train"]} - labelled
    assert all(set(e) == {"image"} for e in unlabeled_images(datalist))  # labels are never handed on


def test_unlabelled_sources_are_checked(setup, tmp_path):
    _, datalist, images, _ = setup
    assert len(unlabeled_images(datalist, images)) == len(datalist["teacher_train"])
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([datalist["test"][0]["image"]]))
    with pytest.raises(DataError, match="validation or test"):
        unlabeled_images(datalist, listing)
    listing.write_text(json.dumps(["missing.nii.gz"]))
    with pytest.raises(DataError, match="missing.nii.gz"):
        unlabeled_images(datalist, listing)
    with pytest.raises(DataError, match="unlabeled_source"):
        unlabeled_images(datalist, tmp_path / "nowhere")
    full = {**datalist, "student_train": datalist["teacher_train"]}
    with pytest.raises(DataError, match="student_fraction"):
        unlabeled_images(full)


def test_kd_trains_on_images_without_label_files(setup):
    root, _, images, common = setup
    assert not any("label" in p.name for p in images.iterdir())
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        run(run_id="training", config_file=["configs/kd.json"], meta_file="configs/metadata.json",
            logging_file="configs/logging.conf", **common)
    finally:
        os.chdir(cwd)
    assert (root / "models" / "model.pt").is_file()
    state = torch.load(root / "models" / "kd" / "training_state.pt", weights_only=True)
    assert state["trainer"]["epoch"] == 2


def test_segmentation_term_never_sees_an_unlabelled_slice(setup):
    root, _, _, common = setup
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        parser = ConfigParser()
        parser.read_config(["configs/kd.json"])
        parser.update({**common, "ckpt_dir": str(root / "spy"), "train_state_dir": str(root / "spy")})
        set_determinism(seed=0)
        trainer = parser.get_parsed_content("train#trainer")
        seg = parser.get_parsed_content("loss_terms#seg").loss
        pmd = parser.get_parsed_content("loss_terms#pmd").loss
        seen = {"seg": [], "pmd": [], "labeled": []}
        seg.register_forward_pre_hook(lambda m, args: seen["seg"].append(args[0].shape[0]))
        pmd.register_forward_pre_hook(lambda m, args: seen["pmd"].append(args[0].shape[0]))
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen["labeled"].append(e.state.batch["labeled"].tolist()))
        trainer.run()
    finally:
        os.chdir(cwd)
    assert seen["labeled"] and all(flags == [1] * 4 + [0] * 4 for flags in seen["labeled"])
    assert seen["seg"] == [4] * len(seen["labeled"])  # the labelled rows only
    assert seen["pmd"] == [8] * len(seen["labeled"])  # distillation: every slice


def test_config_expressions_reach_the_slicing_module_after_any_import_order():
    """Configs say ``bundle.data.slicing...``; it must resolve even when ``bundle.data`` was first imported
    through ``from bundle.data.datalist import ...`` (as the experiment runner does)."""
    import subprocess
    import sys

    code = ("from bundle.data.datalist import DataError\nimport bundle\n"
            "print(bundle.data.slicing.WithUnlabeled.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "WithUnlabeled"
