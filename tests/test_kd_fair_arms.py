"""The baseline student and every distillation arm differ only in the loss terms and the teacher.

Both configs are resolved as a user runs them and trained for two epochs: the student starts from the
same weights and sees the same slices in the same order, with the same optimizer, schedule and
checkpoint selection, although the KD arm builds a teacher and learned heads (which draw random numbers)
before training starts. A different seed must change the stream, so the test can fail.
"""

import hashlib

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from bundle.networks import FeatureUNet
from conftest import REPO, TINY_STUDENT as STUDENT, TINY_TEACHER as TEACHER, config_files

ALL_KD_TERMS = ["infonce_encoder", "infonce_decoder", "mse_bottleneck", "pmd", "cwd", "dist"]


@pytest.fixture(scope="module")
def setup(phantom_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fair")
    torch.save(FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True).state_dict(), root / "teacher.pt")
    common = dict(bundle_root=str(REPO), output_root=str(root), dataset_dir=str(phantom_dir), slice_size=32, epochs=2,
                  val_interval=1, slices_per_volume=4, sw_batch_size=32, teacher_def=TEACHER, student_def=STUDENT,
                  amp=False, teacher_ckpt=str(root / "teacher.pt"))
    return root, common


def _term(term, parser) -> tuple:
    """What the segmentation term computes: its config, its loss, inputs, weight, warm-up and label filter."""
    return (parser.get("seg_term"), parser.get("seg_loss"), parser.get_parsed_content("w_seg"), repr(term.loss),
            term.inputs, term.weight, term.warmup_epochs, term.labeled_only)


def _trace(workflow: str, overrides: dict) -> dict:
    """Resolve a workflow's configs (train.json and its overrides), train it, and record what the student
    started from and saw."""
    parser = ConfigParser()
    parser.read_config(config_files(workflow))
    parser.update(overrides)
    set_determinism(seed=parser.get_parsed_content("seed"))  # as the workflow's "initialize" list does
    trainer = parser.get_parsed_content("train#trainer")
    seen = {"batches": [], "labelled": []}

    @trainer.on(Events.STARTED)
    def _initial(engine):
        seen["weights"] = {k: v.clone() for k, v in engine.network.state_dict().items()}

    @trainer.on(Events.ITERATION_STARTED)
    def _batch(engine):
        batch = engine.state.batch
        rows = batch["image"]
        if "labeled" in batch:
            rows = rows[batch["labeled"].bool()]
            seen["labelled"].append(int(batch["labeled"].sum()))
        seen["batches"].append(hashlib.sha256(rows.as_tensor().numpy().tobytes()).hexdigest())

    trainer.run()
    optimizer = parser.get_parsed_content("optimizer")
    seen["optimizer"] = (type(optimizer).__name__,
                         {k: v for k, v in optimizer.param_groups[0].items() if k != "params"})
    seen["schedule"] = (trainer.state.max_epochs, trainer.state.epoch_length,
                        parser.get_parsed_content("val_interval"), parser.get("best_model_saver"))
    loss = parser.get_parsed_content("loss")
    seen["terms"] = list(loss.terms)
    seen["student_term"] = _term(loss.terms["seg"], parser)
    return seen


def test_baseline_and_distillation_arms_share_init_data_order_optimizer_and_selection(setup):
    _, common = setup
    base = _trace("student", {**common, "run_name": "base"})
    kd = _trace("kd", {**common, "run_name": "kd", "distill": ALL_KD_TERMS})
    assert kd["terms"] == ["seg", *ALL_KD_TERMS] and base["terms"] == ["seg"]  # the arms differ in the loss
    assert base["weights"].keys() == kd["weights"].keys()
    assert all(torch.equal(base["weights"][k], kd["weights"][k]) for k in base["weights"])
    assert len(base["batches"]) == 2 * 3 and base["batches"] == kd["batches"]  # 3 student volumes, 2 epochs
    assert base["optimizer"] == kd["optimizer"]
    assert base["schedule"][:3] == kd["schedule"][:3]
    assert base["schedule"][3]["key_metric_filename"] == kd["schedule"][3]["key_metric_filename"]
    assert base["student_term"] == kd["student_term"]

    other = _trace("student", {**common, "seed": 1, "run_name": "s1"})
    assert other["batches"] != base["batches"]
    first = next(iter(base["weights"]))
    assert not torch.equal(other["weights"][first], base["weights"][first])


def test_unlabelled_arm_keeps_the_baselines_labelled_slices(setup):
    _, common = setup
    base = _trace("student", {**common, "run_name": "base2"})
    unl = _trace("kd", {**common, "run_name": "unl", "use_unlabeled": True, "distill": ["pmd"]})
    assert unl["labelled"] == [4] * 6  # each batch: the baseline's 4 labelled slices + 4 unlabelled ones
    assert unl["batches"] == base["batches"]
    assert all(torch.equal(base["weights"][k], unl["weights"][k]) for k in base["weights"])
