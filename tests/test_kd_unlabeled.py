"""Distillation on volumes without labels: which volumes are used, that a run trains on images whose
label files do not exist, and that the segmentation term never sees an unlabelled slice."""

import json

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from bundle.data.datalist import DataError
from bundle.data.slicing import unlabeled_images
from conftest import bundle_run, config_files


def test_default_unlabelled_volumes_are_the_teachers_outside_the_student_subset(unlabelled_setup):
    _, datalist, _, _ = unlabelled_setup
    found = [e["image"] for e in unlabeled_images(datalist)]
    labelled = {p["image"] for p in datalist["student_train"]}
    assert found and set(found) == {p["image"] for p in datalist["teacher_train"]} - labelled
    assert all(set(e) == {"image"} for e in unlabeled_images(datalist))  # labels are never handed on


def test_unlabelled_sources_are_checked(unlabelled_setup, tmp_path):
    _, datalist, images, _ = unlabelled_setup
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


def test_kd_trains_on_images_without_label_files(unlabelled_setup):
    root, _, images, common = unlabelled_setup
    assert not any("label" in p.name for p in images.iterdir())
    bundle_run("training", "kd", **common)  # kd.json's default distillation recipe
    assert (root / "models" / "model.pt").is_file()
    state = torch.load(root / "models" / "kd" / "training_state.pt", weights_only=True)
    assert state["trainer"]["epoch"] == 2


def test_segmentation_term_never_sees_an_unlabelled_slice(unlabelled_setup):
    _, _, _, common = unlabelled_setup
    parser = ConfigParser()
    parser.read_config(config_files("kd"))
    parser.update({**common, "run_name": "spy", "distill": ["pmd"]})
    set_determinism(seed=0)
    trainer = parser.get_parsed_content("train#trainer")
    terms = parser.get_parsed_content("loss").terms  # the terms the trainer computes
    seen = {"seg": [], "pmd": [], "labeled": []}
    terms["seg"].loss.register_forward_pre_hook(lambda m, args: seen["seg"].append(args[0].shape[0]))
    terms["pmd"].loss.register_forward_pre_hook(lambda m, args: seen["pmd"].append(args[0].shape[0]))
    trainer.add_event_handler(Events.ITERATION_STARTED,
                              lambda e: seen["labeled"].append(e.state.batch["labeled"].tolist()))
    trainer.run()
    assert seen["labeled"] and all(flags == [1] * 4 + [0] * 4 for flags in seen["labeled"])
    assert seen["seg"] == [4] * len(seen["labeled"])  # the labelled rows only
    assert seen["pmd"] == [8] * len(seen["labeled"])  # distillation: every slice


@pytest.mark.parametrize("first_import, expression", [
    ("from bundle.data.datalist import DataError", "bundle.data.slicing.WithUnlabeled.__name__"),
    ("from bundle.losses.prediction_map import PredictionMapDistillation",
     "bundle.losses.composite.select_terms.__name__"),
])
def test_config_expressions_reach_their_modules_after_any_import_order(first_import, expression, tmp_path):
    """Configs say ``bundle.data.slicing...`` and ``bundle.losses.composite...`` in expressions; they must
    resolve even when the package was first imported through one of its other modules (as the experiment
    runner does with ``from bundle.data.datalist import ...``), from any working directory."""
    import subprocess
    import sys

    code = f"{first_import}\nimport bundle\nprint({expression})"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == expression.split(".")[-2]
