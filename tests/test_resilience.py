"""Crash safety and reproducibility: SIGKILL mid-run then resume, atomic checkpoints, identical
seeded runs, training that survives an unreachable MLflow, and checkpoint loading errors."""

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow

from bundle.checkpoint import atomic_save, load_weights
from bundle.networks import FeatureUNet
from conftest import CONFIGS, META_FILE, REPO, TINY_STUDENT as STUDENT, bundle_cli, config_files


def _overrides(phantom_dir, root, **extra):
    return dict(bundle_root=str(REPO), output_root=str(root), dataset_dir=str(phantom_dir), slice_size=32,
                slices_per_volume=4, student_def=STUDENT, amp=False, **extra)


def _losses_of_a_run(phantom_dir, root, epochs=2, name="student", **extra):
    workflow = ConfigWorkflow(config_file=config_files(name), meta_file=META_FILE, logging_file=False,
                              workflow_type="train", run_id="training",
                              **_overrides(phantom_dir, root, **{"epochs": epochs, "val_interval": 100, **extra}))
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    workflow.run()
    return losses, trainer


def test_seeded_runs_give_identical_losses(phantom_dir, tmp_path):
    first, _ = _losses_of_a_run(phantom_dir, tmp_path / "a")
    second, _ = _losses_of_a_run(phantom_dir, tmp_path / "b")
    third, _ = _losses_of_a_run(phantom_dir, tmp_path / "c", seed=7)
    assert len(first) >= 4 and first == second
    assert first != third


def test_training_goes_on_when_mlflow_is_unreachable(phantom_dir, tmp_path, caplog):
    not_a_folder = tmp_path / "plain_file"
    not_a_folder.write_text("")
    for uri in ("http://127.0.0.1:9/", f"sqlite:///{not_a_folder}/mlruns.db"):
        root = tmp_path / str(abs(hash(uri)))
        with caplog.at_level(logging.WARNING, logger="bundle.handlers"):
            _, trainer = _losses_of_a_run(phantom_dir, root, tracking=str(CONFIGS / "mlflow.json"),
                                          tracking_uri=uri)
        assert trainer.state.epoch == 2
        assert any(uri.rstrip("/") in r.getMessage() and "training goes on" in r.getMessage() for r in caplog.records)
        caplog.clear()


def _state_epoch(path: Path) -> int | None:
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)["trainer"]["epoch"]  # raises if ever half-written


def test_sigkill_mid_run_then_resume_finishes_all_epochs(phantom_dir, tmp_path):
    root, epochs = tmp_path / "run", 40
    state = root / "models/student/training_state.pt"
    elsewhere = tmp_path / "elsewhere"  # the command line works from any directory
    elsewhere.mkdir()
    command = bundle_cli("training", config_files("student"), **_overrides(phantom_dir, root, epochs=epochs,
                                                                           val_interval=1000))
    process = subprocess.Popen(command, cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reads, deadline = 0, time.time() + 240
    try:
        while time.time() < deadline and process.poll() is None:
            epoch = _state_epoch(state)  # every read of the live file must succeed
            reads += epoch is not None
            if epoch is not None and epoch >= 3:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    killed_at = _state_epoch(state)
    assert reads > 0 and 3 <= killed_at < epochs
    # a kill mid-write may leave its temporary file beside the state (SIGKILL runs no cleanup), never a torn state

    resumed = subprocess.run(command + ["--resume", "True"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from '{state}' at epoch {killed_at}" in resumed.stdout + resumed.stderr
    assert _state_epoch(state) == epochs
    assert not list(state.parent.glob(".*.tmp"))  # the resumed run's first write cleared what the kill left
    assert not list(elsewhere.iterdir())


def test_atomic_save_replaces_the_file_whole(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"x": torch.zeros(3)}, path)
    atomic_save({"x": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_the_next_write_removes_the_temporary_file_a_killed_write_left(tmp_path):
    path = tmp_path / "ckpt.pt"
    left = tmp_path / ".ckpt.pt.abc123.tmp"  # what a writer killed between mkstemp and rename leaves
    left.write_bytes(b"half")
    other = tmp_path / ".other.pt.abc123.tmp"  # another file's temporary: not ours to remove
    other.write_bytes(b"half")
    atomic_save({"x": torch.ones(3)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp", "ckpt.pt"]


def test_a_write_never_removes_the_temporary_of_a_live_writer_of_the_same_file(tmp_path):
    """Two ranks writing one datalist: the one that finishes first must not take the other's file."""
    from bundle.files import atomic_open, atomic_write_text

    path = tmp_path / "datalist.json"
    with atomic_open(path) as slow:
        slow.write("slow")
        atomic_write_text(path, "fast")  # finishes while the slow writer is still open
    assert path.read_text() == "slow" and [p.name for p in tmp_path.iterdir()] == ["datalist.json"]


def test_a_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(FeatureUNet().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"'{path}' cannot be read.*corrupt"):
        load_weights(FeatureUNet(), path)


def test_a_checkpoint_of_another_network_is_named_with_the_mismatch(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(FeatureUNet(channels=(16, 32, 64), bottleneck=128).state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit the configured FeatureUNet: \d+ unexpected .*shape mismatches"):
        load_weights(FeatureUNet(), path, role="student")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": FeatureUNet()}, path)  # a whole module, not a state_dict: needs unpickling code
    with pytest.raises(ValueError, match="cannot be read"):
        load_weights(FeatureUNet(), path)


def test_resume_flag_from_the_command_line_is_read_as_a_boolean(tmp_path):
    from bundle.checkpoint import TrainingStateSaver, resume_training

    atomic_save({"trainer": {"epoch": 3, "iteration": 9}}, tmp_path / TrainingStateSaver.filename)
    assert resume_training(None, str(tmp_path), {}, resume="false") is False
    assert resume_training(None, str(tmp_path), {}, resume="0") is False


def _validation(saver, scores):
    """A real Ignite engine whose key metric takes the given values, one per run, with ``saver`` attached."""
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_mean_dice=scores.pop(0)))
    saver.attach(engine)
    return engine


def test_a_resumed_run_keeps_the_best_model_when_its_first_validation_is_worse(tmp_path):
    from bundle.checkpoint import AtomicCheckpointSaver, TrainingStateSaver, resume_training

    def saver(network):
        return AtomicCheckpointSaver(save_dir=str(tmp_path / "models"), save_dict={"model": network},
                                     save_key_metric=True, key_metric_name="val_mean_dice",
                                     key_metric_filename="model.pt")

    network = nn.Linear(2, 1)
    first = saver(network)
    _validation(first, [0.8]).run([0], max_epochs=1)
    best = torch.load(tmp_path / "models/model.pt", weights_only=True)
    trainer = Engine(lambda engine, batch: None)
    trainer.run([0], max_epochs=1)
    TrainingStateSaver(str(tmp_path / "state"), {"model": network, "best_model": first}).save(trainer)

    # a new process: fresh objects, restored from the training state, then training moves the weights on
    network = nn.Linear(2, 1)
    resumed = saver(network)
    validation = _validation(resumed, [0.5, 0.9])
    assert resume_training(Engine(lambda engine, batch: None), str(tmp_path / "state"),
                           {"model": network, "best_model": resumed})
    with torch.no_grad():
        network.weight.fill_(7.0)
    validation.run([0], max_epochs=1)  # worse than 0.8: the best file stays
    kept = torch.load(tmp_path / "models/model.pt", weights_only=True)
    assert all(torch.equal(kept[k], best[k]) for k in best)
    validation.run([0], max_epochs=2)  # better: replaced
    assert torch.equal(torch.load(tmp_path / "models/model.pt", weights_only=True)["weight"], torch.full((1, 2), 7.0))
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["model.pt"]


def _resumed_losses(workflow, phantom_dir, root, **extra):
    """Losses of a 2-epoch run, and of the same run stopped after epoch 1 and resumed in a new workflow."""
    straight, _ = _losses_of_a_run(phantom_dir, root / "straight", epochs=2, name=workflow, **extra)
    first, _ = _losses_of_a_run(phantom_dir, root / "resumed", epochs=1, name=workflow, **extra)
    second, trainer = _losses_of_a_run(phantom_dir, root / "resumed", epochs=2, name=workflow, resume=True,
                                       **extra)
    assert trainer.state.epoch == 2 and len(first) == len(second)
    return straight, first + second


def test_resume_continues_the_random_crops_where_they_stopped(phantom_dir, tmp_path):
    """MONAI seeds its random transforms when the workflow is built: a resumed run replayed epoch 1's crops."""
    straight, resumed = _resumed_losses("student", phantom_dir, tmp_path, val_interval=1)
    assert resumed == straight
    best = [torch.load(tmp_path / run / "models/student/model.pt", weights_only=True) for run in ("straight", "resumed")]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


def test_kd_resume_restores_the_distillation_heads_and_their_optimizer_state(phantom_dir, tmp_path):
    teacher = {**STUDENT, "reconstruction": True}
    for run in ("straight", "resumed"):
        (tmp_path / run / "models/teacher").mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True).state_dict(),
                   tmp_path / run / "models/teacher/model.pt")
    straight, resumed = _resumed_losses("kd", phantom_dir, tmp_path, teacher_def=teacher, val_interval=100,
                                        distill=["infonce_encoder", "pmd"])
    assert resumed == straight
    state = torch.load(tmp_path / "resumed/models/kd/training_state.pt", weights_only=True)
    assert any(k.startswith("terms.infonce_encoder.loss.student_head") for k in state["distill_heads"])


def test_resume_of_a_run_with_unlabelled_volumes_continues_exactly(phantom_dir, tmp_path):
    """Some random crops get a generator of their own only once they have run (MONAI's sample croppers), so the
    generators shared at the start are separate mid-run: the resumed pipeline must get the saved structure."""
    for run in ("straight", "resumed"):
        (tmp_path / run / "models/teacher").mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True).state_dict(),
                   tmp_path / run / "models/teacher/model.pt")
    straight, resumed = _resumed_losses("kd", phantom_dir, tmp_path, teacher_def={**STUDENT, "reconstruction": True},
                                        val_interval=100, distill=["dist"], use_unlabeled=True)
    assert resumed == straight


def test_the_training_state_of_train_json_holds_the_best_model_saver(phantom_dir, tmp_path):
    """What ``resume_training`` restores is ``train_state``: without the best-model saver in it, a resumed
    run forgets its best score and overwrites the best model at its first validation."""
    workflow = ConfigWorkflow(config_file=config_files("student"), meta_file=META_FILE, logging_file=False,
                              workflow_type="train", run_id="training",
                              **_overrides(phantom_dir, tmp_path, epochs=1, val_interval=1))
    state = workflow.parser.get_parsed_content("train_state")
    assert state["best_model"] is workflow.parser.get_parsed_content("best_model_saver")
    assert {"model", "optimizer"} <= set(state)


def test_a_pickled_training_state_is_refused_before_anything_is_restored(tmp_path):
    from bundle.checkpoint import TrainingStateSaver, resume_training

    network = nn.Linear(2, 1)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    torch.save({"model": nn.Linear(2, 1), "trainer": {"epoch": 1, "iteration": 1}},
               tmp_path / TrainingStateSaver.filename)  # a module object: loading it runs unpickling code
    with pytest.raises(ValueError, match="training state .* cannot be read"):
        resume_training(Engine(lambda engine, batch: None), str(tmp_path), {"model": network})
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())
