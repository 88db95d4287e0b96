"""The record of one trained teacher of a teacher study (bundle.report.teacher_run) and its table row."""

import json

from bundle.report import TEACHER_TABLE_HEADER, teacher_arm, teacher_arm_row, teacher_run

TRAINER = "ignite.engine.engine.ComposedLossTrainer"


def _teacher_job(folder, log_lines, train_seconds=None):
    (folder / "eval" / "teacher" / "test").mkdir(parents=True)
    (folder / "eval" / "teacher" / "test" / "metrics.csv").write_text(
        "case,dice,iou\nspleen_1.nii.gz,0.81234,0.7\nspleen_2.nii.gz,0.5,0.4\n")
    (folder / "real_ct.json").write_text(json.dumps({"served/model.pt": {"subjects": {
        "example_ct_sm": {"dice": 0.91}, "example_ct_dicom": {"dice": 0.88}}}}))
    if train_seconds is not None:
        (folder / "train_seconds").write_text(str(train_seconds))
    log = folder.parent / f"{folder.name}.log"
    log.write_text("\n".join(log_lines) + "\n")
    return log


def _epoch(epoch, minutes):
    return f"2026-12-07 12:00:00,000 - {TRAINER} - INFO - Epoch[{epoch}] Complete. Time taken: 00:{minutes:02d}:00.000"


def test_a_finished_teacher_job_is_read_as_it_ran(tmp_path):
    log = _teacher_job(tmp_path / "T-s0", ["INFO - Epoch[3] Metrics -- val_mean_dice: 0.6",
                                           "INFO - Epoch[6] Metrics -- val_mean_dice: 0.7", _epoch(6, 5)],
                       train_seconds=1234)
    run = teacher_run(tmp_path / "T-s0", log, "test machine")
    assert run["test_dice_per_volume"] == {"spleen_1.nii.gz": 0.8123, "spleen_2.nii.gz": 0.5}
    assert (run["best_epoch"], run["validation_dice_best"]) == (6, 0.7)
    assert run["real_ct"] == {"example_ct_sm": 0.91, "example_ct_dicom": 0.88}
    assert run["train_seconds"] == 1234 and run["source"] == f"{tmp_path / 'T-s0'} (test machine)"


def test_a_resumed_job_keeps_its_last_validation_and_counts_its_logged_epochs(tmp_path):
    log = _teacher_job(tmp_path / "T-s1", [
        "INFO - Epoch[3] Metrics -- val_mean_dice: 0.9", _epoch(1, 2), _epoch(2, 2), _epoch(3, 2),
        f"{TRAINER} - INFO - resumed from 'training_state.pt' at epoch 2, iteration 10",
        "INFO - Epoch[3] Metrics -- val_mean_dice: 0.5", "INFO - Epoch[6] Metrics -- val_mean_dice: 0.6",
        _epoch(3, 4), _epoch(4, 4)], train_seconds=1)  # train_seconds times the last attempt only
    run = teacher_run(tmp_path / "T-s1", log, "test machine")
    assert run["validation_dice_by_epoch"] == {3: 0.5, 6: 0.6} and run["best_epoch"] == 6
    assert run["train_seconds"] == (2 + 2 + 4 + 4) * 60  # epoch 3's repeat: the last time counts
    assert run["source"].endswith(", interrupted and resumed)")
    row = teacher_arm_row("T", {"parameters": 2_705_106, "test_dice_mean": 0.6562, "test_dice_std": 0.0,
                                "test_dice_per_seed": [0.6562], "seeds": {1: run}}, goal=0.90)
    assert row == "| T | 2.71 M | 0.656 ± 0.000 (0.656) | 0.600 (6) | **0.910** | 0.880 | 12 |"
    assert row.count("|") == TEACHER_TABLE_HEADER[0].count("|")


def test_an_arm_averages_each_volume_over_its_seeds():
    seeds = {0: {"test_dice_per_volume": {"b": 0.6, "a": 0.8}}, 1: {"test_dice_per_volume": {"a": 0.4, "b": 0.2}}}
    arm = teacher_arm("note", 42, seeds)
    assert arm["test_dice_per_seed"] == [0.7, 0.3] and arm["test_dice_mean"] == 0.5
    assert abs(arm["test_dice_std"] - 0.2828) < 1e-4  # sample std of 0.7 and 0.3
    assert list(arm["test_dice_per_volume"]) == ["a", "b"]
    assert [round(d, 6) for d in arm["test_dice_per_volume"].values()] == [0.6, 0.4]
    assert arm["parameters"] == 42 and arm["seeds"] is seeds
