"""The bundle workflows as users run them (``monai.bundle run``), on small phantoms with tiny widths:
teacher -> baseline student -> KD student -> evaluation -> inference, plus MLflow tracking."""

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run

from bundle.networks import FeatureUNet

REPO = Path(__file__).resolve().parents[1]
KD_TERMS = {"seg": "@loss_terms#seg", "infonce_encoder": "@loss_terms#infonce_encoder", "pmd": "@loss_terms#pmd"}
TEACHER = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "channels": [4, 8],
           "bottleneck": 8, "convs_per_block": 1, "reconstruction": True}
STUDENT = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "channels": [4, 8],
           "bottleneck": 8, "convs_per_block": 1}


def bundle_run(run_id, config, **overrides):
    run(run_id=run_id, config_file=[f"configs/{config}.json"], meta_file="configs/metadata.json",
        logging_file="configs/logging.conf", **overrides)


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    """Teacher, baseline student and KD student trained for two epochs each in one bundle root."""
    cwd = os.getcwd()
    os.chdir(REPO)
    root = tmp_path_factory.mktemp("bundle_root")
    common = dict(bundle_root=str(root), dataset_dir=str(phantom_dir), datalist_file=str(root / "datalist.json"),
                  slice_size=32, epochs=2, val_interval=1, slices_per_volume=4, sw_batch_size=32,
                  teacher_def=TEACHER, student_def=STUDENT, amp=False)
    try:
        bundle_run("training", "teacher", **common)
        teacher_hash = hashlib.sha256((root / "models/teacher/model.pt").read_bytes()).hexdigest()
        bundle_run("training", "student", **common)
        # the terms this module checks, whatever recipe kd.json ships by default
        bundle_run("training", "kd", tracking="configs/mlflow.json", **common, **{"loss#terms": KD_TERMS})
        yield root, common, teacher_hash
    finally:
        os.chdir(cwd)


def test_training_writes_the_checkpoints_each_workflow_promises(trained):
    root, _, teacher_hash = trained
    assert (root / "models/teacher/model.pt").is_file() and (root / "models/student/model.pt").is_file()
    served = torch.load(root / "models/model.pt", weights_only=True)
    FeatureUNet(channels=(4, 8), bottleneck=8).load_state_dict(served)  # only the student's weights
    state = torch.load(root / "models/kd/training_state.pt", weights_only=True)
    assert set(state) >= {"model", "optimizer", "distill_heads", "trainer", "rng"}
    assert any(k.startswith("terms.infonce_encoder.loss.student_head") for k in state["distill_heads"])
    assert any(k.startswith("terms.infonce_encoder.loss.teacher_head") for k in state["distill_heads"])
    assert state["trainer"]["epoch"] == 2
    # distillation read the teacher checkpoint and never wrote it
    assert hashlib.sha256((root / "models/teacher/model.pt").read_bytes()).hexdigest() == teacher_hash


def test_a_kd_run_trains_the_distillation_heads(trained, tmp_path, monkeypatch):
    """The heads must be in the optimizer: every parameter of the composite loss moves in one epoch."""
    from monai.bundle import ConfigWorkflow

    root, common, _ = trained
    monkeypatch.chdir(REPO)
    (tmp_path / "models/teacher").mkdir(parents=True)
    (tmp_path / "models/teacher/model.pt").write_bytes((root / "models/teacher/model.pt").read_bytes())
    overrides = {**common, "bundle_root": str(tmp_path), "epochs": 1, "val_interval": 100, "loss#terms": KD_TERMS}
    workflow = ConfigWorkflow(config_file="configs/kd.json", meta_file="configs/metadata.json", logging_file=False,
                              workflow_type="train", run_id="training", **overrides)
    workflow.initialize()
    heads = workflow.parser.get_parsed_content("loss")
    before = {name: p.detach().clone() for name, p in heads.named_parameters()}
    assert any(".student_head" in name for name in before) and any(".teacher_head" in name for name in before)
    workflow.run()
    unchanged = [name for name, p in heads.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not unchanged


def test_splits_are_shared_by_every_workflow(trained):
    root, _, _ = trained
    split = json.loads((root / "datalist.json").read_text())
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


def test_evaluation_writes_per_volume_metrics_and_a_summary(trained):
    root, common, _ = trained
    bundle_run("evaluating", "evaluate", **{k: v for k, v in common.items() if k not in ("epochs", "val_interval",
                                                                                          "slices_per_volume",
                                                                                          "teacher_def", "student_def")},
               network_def=STUDENT, run_name="test_eval")
    summary = json.loads((root / "eval/test_eval/summary.json").read_text())
    assert summary["volumes"] == 2
    assert summary["params"] == sum(p.numel() for p in FeatureUNet(channels=(4, 8), bottleneck=8).parameters())
    assert set(summary["metrics"]) >= {"dice", "iou", "precision", "recall", "surface_dice", "hd95_mm"}
    rows = (root / "eval/test_eval/metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("case,dice")


def test_teacher_evaluation_reports_reconstruction_psnr(trained):
    root, common, _ = trained
    bundle_run("evaluating", "evaluate", bundle_root=str(root), dataset_dir=common["dataset_dir"],
               datalist_file=common["datalist_file"], slice_size=32, network_def=TEACHER,
               ckpt_path=str(root / "models/teacher/model.pt"), outputs=["seg", "rec"], run_name="teacher_eval")
    summary = json.loads((root / "eval/teacher_eval/summary.json").read_text())
    assert summary["metrics"]["psnr"]["mean"] > 5


def test_inference_writes_a_mask_in_the_input_space_of_a_real_ct(trained, totalseg_dir, tmp_path):
    root, _, _ = trained
    source = totalseg_dir / "example_ct_sm.nii.gz"
    bundle_run("run", "inference", bundle_root=str(root), input_files=[str(source)], output_dir=str(tmp_path),
               network_def=STUDENT, slice_size=32)
    mask = nib.load(tmp_path / "example_ct_sm_seg.nii.gz")
    image = nib.load(source)
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_kd_without_a_teacher_checkpoint_says_how_to_train_it(phantom_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(Exception) as error:
        bundle_run("training", "kd", bundle_root=str(tmp_path), dataset_dir=str(phantom_dir),
                   datalist_file=str(tmp_path / "dl.json"), slice_size=32, epochs=1, teacher_def=TEACHER,
                   student_def=STUDENT)
    chain, cause = [], error.value
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    message = " ".join(chain)
    assert "models/teacher/model.pt' does not exist" in message
    assert "--config_file configs/teacher.json" in message


def test_kd_with_a_mismatched_teacher_checkpoint_names_the_mismatch(trained, tmp_path, monkeypatch):
    root, common, _ = trained
    monkeypatch.chdir(REPO)
    bigger = {**TEACHER, "channels": [8, 16]}
    with pytest.raises(Exception) as error:
        bundle_run("training", "kd", **{**common, "teacher_def": bigger, "epochs": 1,
                                       "ckpt_dir": str(tmp_path), "train_state_dir": str(tmp_path)})
    cause, chain = error.value, []
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    assert any("does not fit the configured FeatureUNet" in c and "shape mismatches" in c for c in chain)


def test_monai_label_train_config_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_train_config", REPO / "scripts/make_train_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = json.loads((REPO / "configs/train.json").read_text())
    assert committed == json.loads(json.dumps(module.train_config())), \
        "configs/train.json is stale: run python scripts/make_train_config.py"
    assert "%configs/" not in json.dumps(committed)
    assert committed["run"] == "%#training" or committed["run"] == committed["training"]
