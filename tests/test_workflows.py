"""The bundle workflows as users run them (``monai.bundle run``), on small phantoms with tiny widths:
teacher -> baseline student -> KD student -> evaluation -> inference, plus MLflow tracking.

Every workflow is ``configs/train.json`` with overrides merged on top; every run gets ``bundle_root`` = the
repository and ``output_root`` = a temporary folder, and none depends on the working directory."""

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.networks import FeatureUNet
from conftest import CONFIGS, REPO, bundle_run, config_files, error_chain
from conftest import TINY_STUDENT as STUDENT, TINY_TEACHER as TEACHER

KD_TERMS = ["infonce_encoder", "pmd"]  # the terms this module checks, whatever recipe kd.json ships by default


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    """Teacher, baseline student and KD student trained for two epochs each into one output root."""
    root = tmp_path_factory.mktemp("output_root")
    common = dict(output_root=str(root), dataset_dir=str(phantom_dir), slice_size=32, epochs=2, val_interval=1,
                  slices_per_volume=4, sw_batch_size=32, teacher_def=TEACHER, student_def=STUDENT, amp=False)
    bundle_run("training", "teacher", **common)
    teacher_hash = _sha(root / "models/teacher/model.pt")
    bundle_run("training", "student", **common)
    bundle_run("training", "kd", tracking=str(CONFIGS / "mlflow.json"), **common, distill=KD_TERMS)
    return root, common, teacher_hash


def test_training_writes_the_checkpoints_each_workflow_promises(trained):
    root, _, teacher_hash = trained
    assert (root / "models/teacher/model.pt").is_file() and (root / "models/student/model.pt").is_file()
    served = torch.load(root / "models/model.pt", weights_only=True)
    FeatureUNet(channels=(4, 8), bottleneck=8).load_state_dict(served)  # only the student's weights
    # the last publishing run (KD) published its best model; the teacher never publishes
    assert _sha(root / "models/model.pt") == _sha(root / "models/kd/model.pt")
    state = torch.load(root / "models/kd/training_state.pt", weights_only=True)
    assert set(state) >= {"model", "optimizer", "distill_heads", "trainer", "rng"}
    assert any(k.startswith("terms.infonce_encoder.loss.student_head") for k in state["distill_heads"])
    assert any(k.startswith("terms.infonce_encoder.loss.teacher_head") for k in state["distill_heads"])
    assert state["trainer"]["epoch"] == 2
    # distillation read the teacher checkpoint and never wrote it
    assert _sha(root / "models/teacher/model.pt") == teacher_hash
    for run in ("teacher", "student", "kd"):  # TensorBoard logs per run, under the output root
        assert any((root / "eval" / run).glob("events.out.tfevents.*")), run


def test_a_kd_run_trains_the_distillation_heads(trained, tmp_path):
    """The heads must be in the optimizer: every parameter of the composite loss moves in one epoch."""
    from monai.bundle import ConfigWorkflow

    from conftest import META_FILE

    root, common, _ = trained
    (tmp_path / "models/teacher").mkdir(parents=True)  # kd.json's default teacher checkpoint in this output root
    (tmp_path / "models/teacher/model.pt").write_bytes((root / "models/teacher/model.pt").read_bytes())
    overrides = {**common, "bundle_root": str(REPO), "output_root": str(tmp_path), "epochs": 1, "val_interval": 100,
                 "distill": KD_TERMS}
    workflow = ConfigWorkflow(config_file=config_files("kd"), meta_file=META_FILE, logging_file=False,
                              workflow_type="train", run_id="training", **overrides)
    workflow.initialize()
    heads = workflow.parser.get_parsed_content("loss")
    assert list(heads.terms) == ["seg", *KD_TERMS]
    before = {name: p.detach().clone() for name, p in heads.named_parameters()}
    assert any(".student_head" in name for name in before) and any(".teacher_head" in name for name in before)
    workflow.run()
    unchanged = [name for name, p in heads.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not unchanged


def test_splits_are_shared_by_every_workflow(trained):
    root, _, _ = trained
    split = json.loads((root / "eval/datalist.json").read_text())
    students = {p["image"] for p in split["student_train"]}
    assert students and students <= {p["image"] for p in split["teacher_train"]}


def test_mlflow_records_every_loss_term_and_the_run_definition(trained):
    import mlflow

    root, _, teacher_hash = trained
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/eval/mlruns.db")
    experiment = client.get_experiment_by_name("spleen-kd")
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1
    row = {**{f"params.{k}": v for k, v in found[0].data.params.items()},
           **{f"metrics.{k}": v for k, v in found[0].data.metrics.items()}}
    assert row["params.teacher.sha256"] == teacher_hash
    assert row["params.loss_terms"] == "seg,infonce_encoder,pmd"
    assert row["params.train_split"] == "student_train" and row["params.student_fraction"] == "0.5"
    for metric in ("loss", "loss_seg", "loss_infonce_encoder", "loss_pmd", "val_mean_dice", "val_surface_dice"):
        assert np.isfinite(row[f"metrics.{metric}"]), metric
    assert row["metrics.loss_pmd"] > 0  # a softmax over the single logit channel would log exactly 0


@pytest.mark.parametrize("workflow", ["student", "kd"])
def test_evaluation_writes_per_volume_metrics_and_a_summary(trained, workflow):
    """evaluate.json on top of a training config evaluates that run's best checkpoint into eval/<run>/test/."""
    root, common, _ = trained
    bundle_run("evaluating", config_files(workflow, "evaluate"), **common)
    out = root / "eval" / workflow / "test"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["volumes"] == 2
    assert summary["params"] == sum(p.numel() for p in FeatureUNet(channels=(4, 8), bottleneck=8).parameters())
    assert set(summary["metrics"]) >= {"dice", "iou", "precision", "recall", "surface_dice", "hd95_mm"}
    assert summary["checkpoint"] == str(root / "models" / workflow / "model.pt")
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("case,dice")


def test_teacher_evaluation_reports_reconstruction_psnr(trained):
    root, common, _ = trained
    bundle_run("evaluating", config_files("teacher", "evaluate"), **common, outputs=["seg", "rec"])
    summary = json.loads((root / "eval/teacher/test/summary.json").read_text())
    assert summary["checkpoint"] == str(root / "models/teacher/model.pt")
    assert summary["metrics"]["psnr"]["mean"] > 5


def test_inference_writes_a_mask_in_the_input_space_of_a_real_ct(trained, totalseg_dir, tmp_path):
    """inference.json serves the published model of the output root."""
    root, _, _ = trained
    source = totalseg_dir / "example_ct_sm.nii.gz"
    bundle_run("run", "inference", output_root=str(root), input_files=[str(source)], output_dir=str(tmp_path),
               network_def=STUDENT, slice_size=32)
    mask = nib.load(tmp_path / "example_ct_sm_seg.nii.gz")
    image = nib.load(source)
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    assert (root / "models/model.onnx").is_file()  # exported next to the served checkpoint


def test_kd_without_a_teacher_checkpoint_says_how_to_train_it(phantom_dir, tmp_path):
    with pytest.raises(Exception) as error:
        bundle_run("training", "kd", output_root=str(tmp_path), dataset_dir=str(phantom_dir), slice_size=32,
                   epochs=1, teacher_def=TEACHER, student_def=STUDENT)
    message = error_chain(error.value)
    assert f"'{tmp_path}/models/teacher/model.pt' does not exist" in message
    assert '--config_file "[\'configs/train.json\',\'configs/teacher.json\']"' in message


def test_kd_with_a_mismatched_teacher_checkpoint_names_the_mismatch(trained):
    _, common, _ = trained
    bigger = {**TEACHER, "channels": [8, 16]}
    with pytest.raises(Exception) as error:
        bundle_run("training", "kd", **{**common, "teacher_def": bigger, "epochs": 1, "run_name": "mismatch"})
    assert any("does not fit the configured FeatureUNet" in c and "shape mismatches" in c
               for c in error_chain(error.value).split("\n"))


def _tree(path):
    """Every file below ``path`` with its size and modification time (empty when ``path`` is absent)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))} if path.exists() else {}


def test_workflows_run_from_any_working_directory_and_only_the_student_is_published(phantom_dir, tmp_path,
                                                                                    monkeypatch):
    """From an unrelated working directory every output lands under output_root: checkpoints, training state,
    split, logs and the published model; nothing in the repository or the working directory. A teacher run
    (publish false) neither creates nor replaces the served models/model.pt."""
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    repo_before = {name: _tree(REPO / name) for name in ("eval", "models", "data")}
    common = dict(output_root=str(out), dataset_dir=str(phantom_dir), slice_size=48, slices_per_volume=4, epochs=1,
                  val_interval=1, sw_batch_size=48, teacher_def=TEACHER, student_def=STUDENT, amp=False)

    bundle_run("training", "teacher", **common)
    assert (out / "models/teacher/model.pt").is_file() and (out / "models/teacher/training_state.pt").is_file()
    assert not (out / "models/model.pt").exists()  # not created

    bundle_run("training", "student", **common)
    assert (out / "models/student/model.pt").is_file() and (out / "models/student/training_state.pt").is_file()
    assert (out / "eval/datalist.json").is_file()
    served = _sha(out / "models/model.pt")
    assert served == _sha(out / "models/student/model.pt")

    bundle_run("training", "teacher", **{**common, "run_name": "teacher2"})
    assert (out / "models/teacher2/model.pt").is_file()
    assert _sha(out / "models/model.pt") == served  # not replaced

    assert not list(elsewhere.iterdir()), "a workflow wrote into the working directory"
    assert {name: _tree(REPO / name) for name in repo_before} == repo_before, "a workflow wrote into the repository"


def test_a_run_shorter_than_the_validation_interval_still_validates_and_publishes(phantom_dir, tmp_path):
    """MONAI Label fine-tunes train.json for as few epochs as the user asks (max_epochs overridden, the
    validation interval not): the last epoch is validated, so a best model exists and is published."""
    out = tmp_path / "out"
    bundle_run("run", "student", output_root=str(out), dataset_dir=str(phantom_dir), slice_size=48,
               slices_per_volume=4, sw_batch_size=48, student_def=STUDENT, amp=False, val_interval=5,
               **{"train#trainer#max_epochs": 2})
    assert (out / "models/student/model.pt").is_file()
    assert _sha(out / "models/model.pt") == _sha(out / "models/student/model.pt")


def test_publish_false_from_the_command_line_keeps_the_served_model(phantom_dir, tmp_path):
    """`--publish false` reaches the config as the string "false"; it must not publish."""
    out = tmp_path / "out"
    bundle_run("training", "student", output_root=str(out), dataset_dir=str(phantom_dir), slice_size=48,
               slices_per_volume=4, sw_batch_size=48, student_def=STUDENT, amp=False, epochs=1, val_interval=1,
               publish="false")
    assert (out / "models/student/model.pt").is_file()
    assert not (out / "models/model.pt").exists()
