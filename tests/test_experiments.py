"""The experiment grid: statistics on known inputs, the grid planner, compare_runs on a real MLflow
store, and one tiny end-to-end grid on phantoms (with a rerun that must do nothing)."""

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from bundle import stats
from conftest import REPO, TINY_STUDENT as TINY, config_files


from bundle import compare as compare_runs
from bundle import evaluation as evaluate_real
from bundle import experiments


# --- statistics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", sorted(p.stem for p in experiments.GRIDS.glob("*.json")))
def test_every_committed_grid_loads_and_plans_distinct_runs(grid, tmp_path):
    """A grid file in configs/experiments is a study's record: it must still load against kd.json's terms,
    find its given teachers, and plan one run per name over its own seeds. A given teacher under runs/ is made by a
    committed script (its grid says which) and exists only where that script ran."""
    spec = experiments.load_grid(grid)
    made_here = [t["checkpoint"] for t in spec["teachers"].values() if experiments.is_trained_teacher(t)
                 and t["checkpoint"].startswith("runs/") and not (REPO / t["checkpoint"]).is_file()]
    if made_here:
        pytest.skip(f"grid {grid}: teacher {made_here[0]} is made by a script, not committed")
    runs = experiments.plan(spec, tmp_path / "out", spec["seeds"], "/data/x")
    names = [run.name for run in runs]
    assert names and len(names) == len(set(names))
    assert {run.seed for run in runs if run.stage != "teacher"} == set(spec["seeds"])


def test_mean_std_ignores_nan_and_states_missing_spread():
    mean, std, n = stats.mean_std([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert (mean, n) == (2.5, 4) and std == pytest.approx(math.sqrt(5 / 3))
    assert math.isnan(stats.mean_std([0.7])[1]) and stats.mean_std([0.7])[0] == 0.7
    assert math.isnan(stats.mean_std([])[0]) and stats.mean_std([])[2] == 0


def test_paired_t_matches_a_hand_computed_example():
    # differences 1, 2, 0, 3: mean 1.5, sd sqrt(5/3), t = 1.5 / (sd / 2)
    result = stats.paired_t([5, 7, 9, 6], [4, 5, 9, 3])
    t = 1.5 / (math.sqrt(5 / 3) / 2)
    assert result.statistic == pytest.approx(t) and result.statistic == pytest.approx(2.32379, abs=1e-5)
    assert result.p == pytest.approx(2 * sps.t.sf(t, 3)) and result.df == (3,) and result.n == 4


def test_paired_tests_pair_mappings_by_key():
    a = {"case1": 0.9, "case2": 0.8, "case3": 0.7, "only_a": 0.1}
    b = {"case3": 0.6, "case2": 0.75, "case1": 0.85, "only_b": 0.9}
    assert stats.paired_t(a, b).n == 3
    assert stats.paired_t(a, b).p == pytest.approx(sps.ttest_rel([0.9, 0.8, 0.7], [0.85, 0.75, 0.6]).pvalue)


def test_wilcoxon_exact_and_its_smallest_possible_p_is_stated():
    result = stats.wilcoxon([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert result.statistic == 0 and result.p == pytest.approx(2 / 2**5)
    assert "cannot fall below 0.0625" in result.note


@pytest.mark.parametrize("a, b, p, note", [
    ([0.9], [0.8], float("nan"), "1 pair(s): no test"),
    ([0.9, 0.8, 0.7], [0.9, 0.8, 0.7], 1.0, "all differences are zero"),
    ([0.9, 0.8, 0.7], [0.8, 0.7, 0.6], float("nan"), "t undefined"),
])
def test_paired_t_degenerate_inputs_give_a_stated_result(a, b, p, note):
    result = stats.paired_t(a, b)
    assert (math.isnan(result.p) if math.isnan(p) else result.p == p) and note in result.note


def test_wilcoxon_degenerate_inputs_give_a_stated_result():
    assert stats.wilcoxon([0.5, 0.6], [0.5, 0.6]).p == 1.0
    assert math.isnan(stats.wilcoxon([], []).p)


def test_anova_matches_the_closed_form_and_scipy():
    # SSB = 54 (df 2), SSW = 6 (df 6): F = 27; for df1 = 2, p = (1 + 2F/6)^-3 = 0.001
    result = stats.anova({"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]})
    assert result.statistic == pytest.approx(27) and result.p == pytest.approx(1e-3) and result.df == (2, 6)
    groups = {"enc": [0.71, 0.74, 0.69, 0.73], "bot": [0.75, 0.78, 0.76], "dec": [0.70, 0.72, 0.74, 0.71, 0.69]}
    reference = sps.f_oneway(*groups.values())
    assert stats.anova(groups).statistic == pytest.approx(reference.statistic)
    assert stats.anova(groups).p == pytest.approx(reference.pvalue)


def test_anova_degenerate_inputs_give_a_stated_result():
    assert "no within-group variance" in stats.anova({"a": [0.7], "b": [0.8]}).note
    assert stats.anova({"a": [0.7, 0.7], "b": [0.7, 0.7]}).p == 1.0
    infinite = stats.anova({"a": [0.7, 0.7], "b": [0.8, 0.8]})
    assert infinite.statistic == math.inf and infinite.p == 0.0
    assert "1 group(s)" in stats.anova({"a": [0.7, 0.8], "empty": []}).note


def test_holm_adjusts_in_order_and_skips_nan():
    adjusted = stats.holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])


def test_paired_comparisons_pair_volumes_by_key_and_holm_adjust_across_the_pairs():
    arms = {"kd": {"c1": 0.9, "c2": 0.8, "c3": 0.7, "c4": 0.6, "only_kd": 0.0},
            "base": {"c4": 0.5, "c3": 0.6, "c2": 0.75, "c1": 0.85},
            "other": {"c1": 0.9, "c2": 0.7, "c3": 0.75, "c4": 0.6}}
    result = stats.paired_comparisons(arms, [("kd", "base"), ("kd", "other")])
    first, second = result["kd vs base"], result["kd vs other"]
    assert first["volumes"] == 4 and first["gain"] == pytest.approx(0.075)  # (0.05 + 0.05 + 0.1 + 0.1) / 4
    assert first["p_t"] == pytest.approx(sps.ttest_rel([0.9, 0.8, 0.7, 0.6], [0.85, 0.75, 0.6, 0.5]).pvalue)
    assert first["p_wilcoxon"] == pytest.approx(stats.wilcoxon(arms["kd"], arms["base"]).p)
    assert second["gain"] == pytest.approx(0.0125)
    assert [first["p_holm"], second["p_holm"]] == pytest.approx(stats.holm([first["p_t"], second["p_t"]]))
    assert second["p_holm"] > first["p_holm"]



def test_goal_marked_bolds_exactly_the_values_at_or_above_the_goal():
    from bundle.report import goal_marked

    assert goal_marked([0.8495, 0.85, 0.9123, 0.0], 0.85) == "0.850 / **0.850** / **0.912** / 0.000"
    assert goal_marked([], 0.85) == ""

def _record(run, config, seed, dice, baseline=None):
    return stats.RunRecord(run, config, seed, baseline, 57,
                           {f"case{i}": {"dice": d, "iou": d / (2 - d), "hd95_mm": 5.0} for i, d in enumerate(dice)})


def test_compare_averages_volumes_over_shared_seeds():
    base = [_record(f"b{s}", "base", s, [0.70 + 0.01 * s, 0.60, 0.80, 0.75]) for s in (0, 1, 2)]
    kd = [_record(f"k{s}", "kd", s, [0.74 + 0.01 * s, 0.66, 0.81, 0.80], "base") for s in (0, 1)]
    result = stats.compare(kd, base)
    assert result["seeds"] == 2 and result["delta"] == pytest.approx((0.04 + 0.06 + 0.01 + 0.05) / 4)
    ours, theirs = [0.745, 0.66, 0.81, 0.80], [0.705, 0.60, 0.80, 0.75]
    assert result["volume_t"].p == pytest.approx(sps.ttest_rel(ours, theirs).pvalue) and result["volume_t"].n == 4
    table = stats.results_table(base + kd)
    assert "| kd | 2 | 57 |" in table and "| base | +0.0400 |" in table


# --- the grid planner -------------------------------------------------------------------------------------


def test_thesis_grid_size_names_and_overrides(tmp_path):
    grid = experiments.load_grid("thesis")
    runs = experiments.plan(grid, tmp_path, [0, 1, 2], "/data/Task09_Spleen")
    # per seed: 2 students x 2 fractions baselines + 2 teachers x 2 students x (30 variants at 50 % + 8 at 100 %)
    assert len(runs) == 2 + 3 * (4 + 4 * (30 + 8)) and len({r.name for r in runs}) == len(runs)
    assert [r.name for r in runs[:2]] == ["teacher-T1", "teacher-T2"]
    pattern = re.compile(r"^(teacher-T[12]|S[12]-f(50|100)-base-s[012]|T[12]-S[12]-f(50|100)-"
                         r"((nce|mse)_[bed]{1,3}(\+pmd)?|pmd|ra_e)-s[012])$")
    assert all(pattern.match(r.name) for r in runs)
    by_name = {r.name: r for r in runs}
    assert "teacher_def" not in by_name["teacher-T1"].overrides  # T1: the configs' own teacher
    assert by_name["teacher-T2"].overrides["teacher_def"]["img_size"] == "@slice_size"
    # every run: the bundle in the repository, its outputs under OUT, checkpoints by run name, nothing published
    for run in runs:
        assert run.overrides["bundle_root"] == str(REPO) and run.overrides["output_root"] == str(tmp_path)
        assert run.overrides["run_name"] == run.name and run.overrides["publish"] is False
        assert not {"loss#terms", "ckpt_dir", "train_state_dir"} & set(run.overrides), run.name
    mse = by_name["T2-S2-f50-mse_bed-s1"].overrides
    assert mse["distill"] == ["mse_bottleneck", "mse_encoder", "mse_decoder"]
    assert mse["teacher_ckpt"] == str(tmp_path / "models/teacher-T2/model.pt") and mse["seed"] == 1
    assert mse["student_def"]["channels"] == [16, 32, 64] and mse["teacher_def"]["_target_"].endswith("MultiTaskUNETR")
    assert by_name["T1-S1-f50-nce_e+pmd-s0"].overrides["distill"] == ["infonce_encoder", "pmd"]
    assert by_name["T1-S1-f50-ra_e-s0"].overrides["distill"] == ["region_affinity_encoder"]
    assert "distill" not in by_name["S1-f50-base-s0"].overrides and "distill" not in by_name["teacher-T1"].overrides
    full = by_name["T1-S1-f100-nce_bed+pmd-s2"]
    assert full.overrides["student_fraction"] == 1.0 and full.overrides["datalist_file"].endswith("split0-f100.json")
    assert full.baseline == "S1-f100-base" and by_name["S1-f100-base-s2"].overrides["student_fraction"] == 1.0
    assert "T1-S1-f100-mse_b-s0" not in by_name  # table 4.11 studies InfoNCE only
    assert all(r.overrides["datalist_file"].endswith("split0-f50.json") for r in runs if r.name.startswith("teacher"))
    families = experiments.anova_families(grid, runs)
    assert len(families) == 2 * 2 * (4 + 2)  # four families at 50 %, the two InfoNCE ones at 100 %
    assert families["InfoNCE scales · T1-S1-f50"] == ["S1-f50-base"] + [f"T1-S1-f50-nce_{s}" for s in
                                                                        ("b", "e", "d", "be", "ed", "bd", "bed")]
    assert families["InfoNCE scales · T2-S2-f100"] == ["S2-f100-base"] + [f"T2-S2-f100-nce_{s}" for s in
                                                                          ("b", "e", "be", "bed")]


def test_smoke_grid_and_dry_run_plan_without_running(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the runner works from any directory
    result = experiments.main(["--out", str(tmp_path / "out"), "--grid", "smoke", "--dry_run"])
    assert result["planned"] == ["teacher-T1", "S1-f50-base-s0", "T1-S1-f50-nce_e-s0", "T1-S1-f50-nce_bed+pmd-s0",
                                 "S1-f50-base-s1", "T1-S1-f50-nce_e-s1", "T1-S1-f50-nce_bed+pmd-s1"]
    assert result["trained"] == [] and not (tmp_path / "out").exists()
    printed = capsys.readouterr().out
    assert "(train.json + kd.json + demo.json)" in printed and "(train.json + teacher.json + demo.json)" in printed
    assert "(train.json + demo.json)" in printed  # the baseline student: the base config alone
    only = experiments.main(["--out", str(tmp_path / "out"), "--grid", "thesis", "--dry_run",
                             "--only", "T2-S1-f100-nce_e-s1"])
    assert only["planned"] == ["teacher-T2", "S1-f100-base-s1", "T2-S1-f100-nce_e-s1"]  # with what it needs


def test_more_training_volumes_join_every_split_file_and_change_no_held_out_volume(phantom_dir, tmp_path):
    from bundle.data.phantoms import make_phantom_dataset

    more = make_phantom_dataset(tmp_path / "more", cases=2, seed=5, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0)).parent
    grid = experiments.load_grid("smoke")
    configs = [str(REPO / c) for c in grid["configs"]]
    lists = {}
    for name, extra in (("plain", None), ("grown", str(more))):
        runs = experiments.plan(grid, tmp_path / name, [0], str(phantom_dir))
        experiments._write_datalists(runs, configs, str(phantom_dir), 0, print, extra)
        lists[name] = json.loads((tmp_path / name / "datalists" / "split0-f50.json").read_text())
    plain, grown = lists["plain"], lists["grown"]
    assert grown["validation"] == plain["validation"] and grown["test"] == plain["test"]
    added = {pair["image"] for pair in grown["teacher_train"]} - {pair["image"] for pair in plain["teacher_train"]}
    assert len(added) == 2 and all(image.startswith(str(more)) for image in added)
    assert grown["more_training"] == str(more) and "more_training" not in plain
    with pytest.raises(SystemExit, match="more training volumes from None"):  # the grown split is not reused for other data
        experiments._write_datalists(runs, configs, str(phantom_dir), 0, print, None)


def test_proof_grid_plans_the_assistant_chain_and_the_unlabelled_arm(tmp_path):
    grid = experiments.load_grid("proof")
    runs = experiments.plan(grid, tmp_path, [0, 1], "/data/phantoms")
    by_name = {r.name: r for r in runs}
    assert [r.name for r in runs[:2]] == ["teacher-T1", "assistant-TA"] and len(runs) == 2 + 2 * 9  # base + 8 arms
    assistant = by_name["assistant-TA"]
    assert assistant.stage == "kd" and assistant.overrides["student_def"]["channels"] == [16, 32, 64]
    assert assistant.overrides["teacher_ckpt"] == str(tmp_path / "models/teacher-T1/model.pt")
    chained = by_name["TA-S1-f50-ta_pmd-s1"]
    assert chained.overrides["teacher_def"] == assistant.network and chained.teacher == "assistant-TA"
    assert chained.overrides["teacher_ckpt"] == str(tmp_path / "models/assistant-TA/model.pt")
    assert chained.baseline == "S1-f50-base" and chained.overrides["distill"] == ["pmd"]
    assert by_name["T1-S1-f50-pmd+unl-s0"].overrides["use_unlabeled"] is True
    assert by_name["T1-S1-f50-dist+unl-s0"].overrides["use_unlabeled"] is True
    assert by_name["T1-S1-f50-dist+unl-s0"].overrides["distill"] == ["dist"]
    assert by_name["T1-S1-f50-pmd-s0"].overrides["use_unlabeled"] is False  # the grid states it: kd.json turns it on
    assert [r.name for r in experiments.select(runs, ["TA-S1-f50-ta_pmd-s1"])] == [
        "teacher-T1", "assistant-TA", "S1-f50-base-s1", "TA-S1-f50-ta_pmd-s1"]  # transitively


def test_a_trained_teacher_is_not_retrained_and_its_students_distil_from_its_checkpoint(tmp_path):
    import torch

    from bundle.networks import FeatureUNet
    from bundle.serving import model_info

    teacher = FeatureUNet(**{k: v for k, v in TINY.items() if k != "_target_"}, reconstruction=True)
    ckpt = tmp_path / "trained" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(teacher.state_dict(), ckpt)
    model_info.write(ckpt, teacher, slice_size=32)
    grid = {"name": "g", "teachers": {"given": {"checkpoint": str(ckpt)}, "T1": None}, "students": {"S1": TINY},
            "variants": {"dist": {"terms": ["dist"], "overrides": {}, "teacher": None}},
            "fractions": {"0.5": ["dist"]}, "anova": {}}
    runs = experiments.plan(grid, tmp_path / "out", [0], "/data/x")
    by_name = {r.name: r for r in runs}
    assert sorted(by_name) == ["S1-f50-base-s0", "T1-S1-f50-dist-s0", "given-S1-f50-dist-s0", "teacher-T1"]
    given = by_name["given-S1-f50-dist-s0"]
    assert given.overrides["teacher_ckpt"] == str(ckpt) and given.teacher is None
    assert given.overrides["teacher_def"] == model_info.read(ckpt)["network_def"]
    assert given.overrides["teacher_def"]["reconstruction"] is True
    assert by_name["T1-S1-f50-dist-s0"].overrides["teacher_ckpt"] == str(tmp_path / "out/models/teacher-T1/model.pt")
    assert [r.name for r in experiments.select(runs, ["given-*"])] == ["S1-f50-base-s0", "given-S1-f50-dist-s0"]
    shipped = experiments.plan(experiments.load_grid("shipped"), tmp_path / "out", [0], "/data/x")
    assert not any(r.stage == "teacher" for r in shipped)
    assert {r.overrides.get("teacher_ckpt") for r in shipped} == {None, str(REPO / "models/teacher/model.pt")}
    torch.save({k: v + 1 for k, v in teacher.state_dict().items()}, ckpt)  # other weights than model.json describes
    with pytest.raises(SystemExit, match="grid teacher 'given'.*describes other weights"):
        experiments.plan(grid, tmp_path / "out", [0], "/data/x")
    grid["teachers"]["given"]["checkpoint"] = str(tmp_path / "missing.pt")
    with pytest.raises(SystemExit, match="grid teacher 'given'.*missing.pt"):
        experiments.plan(grid, tmp_path / "out", [0], "/data/x")


def test_a_variant_without_terms_is_the_student_alone_with_its_overrides(tmp_path):
    grid = experiments.load_grid("proof_synthetic")
    runs = experiments.plan(grid, tmp_path, [0], "/data/synthetic")
    by_name = {r.name: r for r in runs}
    assert sorted(by_name) == ["S1-f50-aug-s0", "S1-f50-base-s0", "T1-S1-f50-dist+aug-s0", "T1-S1-f50-dist+unl-s0",
                               "T1-S1-f50-dist-s0", "teacher-T1"]
    aug = by_name["S1-f50-aug-s0"]
    assert aug.stage == "student" and aug.teacher is None and aug.baseline == "S1-f50-base"
    assert aug.overrides["augment"] is True and "teacher_ckpt" not in aug.overrides and "distill" not in aug.overrides
    assert by_name["T1-S1-f50-dist+aug-s0"].overrides["augment"] is True
    assert "augment" not in by_name["S1-f50-base-s0"].overrides
    assert [r.name for r in experiments.select(runs, ["S1-f50-aug-*"])] == ["S1-f50-base-s0", "S1-f50-aug-s0"]


def test_levers_grid_shares_the_alternatives_runs_and_plans_each_teachers_variants_once(tmp_path):
    levers = experiments.plan(experiments.load_grid("levers"), tmp_path, [0], "/data/synthetic")
    alternatives = experiments.plan(experiments.load_grid("alternatives"), tmp_path, [0], "/data/synthetic")
    by_name = {r.name: r for r in levers}
    assert [r.name for r in levers[:2]] == ["teacher-T1", "teacher-T2"] and len(levers) == 2 + 9  # base + 8 arms
    assert by_name["teacher-T2"].network["hidden_size"] == 384
    shared = {"teacher-T1", "S1-f50-base-s0", "T1-S1-f50-dist+unl-s0", "T1-S1-f50-pseudo-s0"}
    assert shared <= {r.name for r in alternatives}  # one --out: these are not trained twice
    for name in shared:
        assert by_name[name].overrides == {r.name: r for r in alternatives}[name].overrides
    vit = by_name["T2-S1-f50-vit-dist+unl-s0"]
    assert vit.teacher == "teacher-T2" and vit.overrides["teacher_ckpt"] == str(tmp_path / "models/teacher-T2/model.pt")
    assert not any(r.name.startswith("T2-") and r.name != vit.name for r in levers)
    assert by_name["T1-S1-f50-pseudo96-s0"].overrides["unlabeled_source"] == "unlabelled/pool_96.json"
    assert by_name["T1-S1-f50-dist+unl-long-s0"].overrides["epochs"] == 90


def test_grids_with_unknown_terms_are_refused(tmp_path):
    spec = json.loads((REPO / "configs/experiments/smoke.json").read_text())
    spec["variants"]["nce_enc"] = ["infonce_encoderr"]
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    with pytest.raises(SystemExit, match="infonce_encoderr"):
        experiments.load_grid(str(tmp_path / "bad.json"))


# --- compare_runs on a real MLflow store ------------------------------------------------------------------


def _write_csv(path: Path, dice: list[float]) -> None:
    path.mkdir(parents=True)
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "dice", "iou", "hd95_mm"])
        writer.writerows([f"spleen_{i}.nii.gz", d, d / (2 - d), ""] for i, d in enumerate(dice))


def test_compare_runs_groups_seeds_and_finds_baselines(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)  # not mlflow.set_tracking_uri: it leaks into later tests
    experiment = client.create_experiment("spleen-kd", artifact_location=str(tmp_path / "artifacts"))

    def log_run(name, params, metrics, start_time=None):
        run_id = client.create_run(experiment, start_time=start_time, run_name=name).info.run_id
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id)

    student = {"network": "FeatureUNet", "network.params": 56849, "train_split": "student_train", "epochs": 120,
               "student_fraction": 0.5, "slice_size": 256, "learning_rate": 0.001}
    kd = {**student, "loss_terms": "seg,infonce_encoder", "teacher": "FeatureUNet", "teacher.params": 43226946}
    dice = {"S1-f50-base": [0.70, 0.60, 0.80], "T1-S1-f50-nce_enc": [0.74, 0.66, 0.81]}
    log_run("S1-f50-base-s0", {**student, "loss_terms": "seg", "seed": 0}, {"val_mean_dice": 0.1}, 1)  # rerun below
    for seed in (0, 1):
        for config, params in (("S1-f50-base", {**student, "loss_terms": "seg"}), ("T1-S1-f50-nce_enc", kd)):
            log_run(f"{config}-s{seed}", {**params, "seed": seed}, {"val_mean_dice": 0.5})
            _write_csv(tmp_path / f"{config}-s{seed}" / "test", [d + 0.01 * seed for d in dice[config]])
    # at 100 % there is no baseline, and no CSV: the table falls back on the logged test mean
    log_run("T1-S1-f100-nce_enc-s0", {**kd, "student_fraction": 1.0, "seed": 0}, {"test_dice": 0.9})

    out = tmp_path / "table.md"
    text = compare_runs.main(["--tracking_uri", uri, "--out", str(out), "--anova"])
    assert out.read_text() == text and text.startswith("5 runs")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["S1-f50-base"].startswith("| S1-f50-base | 2 | 56849 | 0.7050 ± 0.0071 |")
    expected = stats.paired_t([0.745, 0.665, 0.815], [0.705, 0.605, 0.805]).p
    assert f"| S1-f50-base | +0.0367 | {expected:.4f} |" in rows["T1-S1-f50-nce_enc"]
    assert "| 0.9000 |" in rows["T1-S1-f100-nce_enc"] and "| — |" in rows["T1-S1-f100-nce_enc"]
    assert "| shown configurations | S1-f50-base (2), T1-S1-f50-nce_enc (2) |" in text

    only = compare_runs.main(["--tracking_uri", uri, "--runs", "S1-f50-base-*"])
    assert "T1-S1" not in only and only.startswith("2 runs")


# --- one real grid, end to end ----------------------------------------------------------------------------


def test_tiny_grid_end_to_end_and_rerun_does_nothing(phantom_dir, tmp_path, monkeypatch):
    import mlflow

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the runner works from any directory and writes only under --out
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri elsewhere sets it
    grid = {"description": "tiny", "configs": [], "seeds": [0],
            "overrides": {"slice_size": 32, "epochs": 1, "val_interval": 1, "slices_per_volume": 4,
                          "sw_batch_size": 32, "amp": False, "teacher_cache_mb": 0},
            "teachers": {"T1": {**TINY, "reconstruction": True}}, "students": {"S1": TINY},
            "variants": {"nce_enc": ["infonce_encoder"], "mse_enc+pmd": ["mse_encoder", "pmd"]},
            "fractions": {"0.5": ["nce_enc", "mse_enc+pmd"]}, "anova": {"tiny": ["base", "nce_enc", "mse_enc+pmd"]}}
    (tmp_path / "tiny.json").write_text(json.dumps(grid))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--grid", str(tmp_path / "tiny.json"), "--dataset_dir", str(phantom_dir)]
    names = ["teacher-T1", "S1-f50-base-s0", "T1-S1-f50-nce_enc-s0", "T1-S1-f50-mse_enc+pmd-s0"]

    first = experiments.main(argv)
    assert first["trained"] == names and first["evaluated"] == names
    for name in names:
        rows = (experiments.eval_dir(out, name) / "metrics.csv").read_text().splitlines()
        assert experiments.eval_dir(out, name) == out / "eval" / name / "test"
        assert rows[0].startswith("case,dice,iou") and len(rows) == 3  # two test volumes
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("spleen-kd").experiment_id
    tracked = {run.info.run_name: run.data for run in client.search_runs([experiment])}
    assert sorted(tracked) == sorted(names)
    assert tracked["T1-S1-f50-mse_enc+pmd-s0"].params["loss_terms"] == "seg,mse_encoder,pmd"
    assert all(np.isfinite(data.metrics["test_dice"]) for data in tracked.values())
    results = (out / "results.md").read_text()
    assert "| T1-S1-f50-nce_enc | 1 |" in results and "| S1-f50-base |" in results
    assert "| tiny · T1-S1-f50 |" in results and "4 of 4 planned runs evaluated" in results

    summary = json.loads((out / "summary.json").read_text())
    base = {r.split(",")[0]: float(r.split(",")[1]) for r in
            (out / "eval/S1-f50-base-s0/test/metrics.csv").read_text().splitlines()[1:]}
    assert summary["baseline"]["dice_per_volume"] == pytest.approx(base) and summary["test_volumes"] == 2
    for name in ("T1-S1-f50-nce_enc", "T1-S1-f50-mse_enc+pmd"):
        rows = (out / "eval" / f"{name}-s0" / "test/metrics.csv").read_text().splitlines()[1:]
        ours = {r.split(",")[0]: float(r.split(",")[1]) for r in rows}
        variant = summary["variants"][name]
        assert variant["gain"] == pytest.approx(np.mean([ours[c] - base[c] for c in base]))
        assert variant["p_holm"] >= variant["p"] or math.isnan(variant["p"])
    assert (out / "summary.png").stat().st_size > 0

    # the real fixtures, scored for every trained run with that run's own configs and overrides
    real = evaluate_real.evaluate_grid(out)
    assert sorted(real) == sorted(names)
    trained = json.loads((out / "stages/S1-f50-base-s0/train.json").read_text())
    direct = evaluate_real.evaluate_model(TINY, out / "models/S1-f50-base-s0/model.pt",
                                          config_files("student", "evaluate"),
                                          overrides={k: trained["overrides"][k] for k in ("slice_size", "bundle_root")})
    assert real["S1-f50-base-s0"]["subjects"] == direct
    assert all(0 <= r["dice"] <= 1 for entry in real.values() for r in entry["subjects"].values())

    assert (out / "models/teacher-T1/model.pt").is_file() and (out / "models/T1-S1-f50-nce_enc-s0/model.pt").is_file()
    assert not (out / "models/model.pt").exists()  # grid runs never replace the served model

    again = experiments.main(argv)
    assert again["trained"] == [] and again["evaluated"] == []
    assert len(client.search_runs([experiment])) == 4
    assert not list(elsewhere.iterdir())


def test_a_grid_trains_a_3d_teacher_and_distils_from_its_bundle(phantom_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    unet = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0}
    grid = {"description": "tiny 3D", "configs": [], "seeds": [0],
            "overrides": {"slice_size": 32, "epochs": 1, "val_interval": 1, "slices_per_volume": 4, "sw_batch_size": 32,
                          "amp": False},
            "teachers": {"U3": {"workflow": "teacher_3d", "overrides": {
                "teacher_3d_args": unet, "teacher_3d_roi": [32, 32, 16], "teacher_3d_pixdim": [6.0, 6.0, 10.0],
                "patches_per_volume": 1}}},
            "students": {"S1": TINY}, "variants": {"dist": ["dist"]}, "fractions": {"0.5": ["dist"]}, "anova": {}}
    (tmp_path / "tiny3d.json").write_text(json.dumps(grid))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--grid", str(tmp_path / "tiny3d.json"), "--dataset_dir", str(phantom_dir)]
    planned = experiments.plan(experiments.load_grid(str(tmp_path / "tiny3d.json")), out, [0], str(phantom_dir))
    kd = planned[-1]
    assert [r.stage for r in planned] == ["teacher_3d", "student", "kd"] and kd.configs == ("teacher_bundle",)
    assert kd.overrides["teacher_bundle"] == str(out / "bundles" / "teacher-U3") and "teacher_def" not in kd.overrides
    names = ["teacher-U3", "S1-f50-base-s0", "U3-S1-f50-dist-s0"]
    result = experiments.main(argv)
    assert result["trained"] == names and result["evaluated"] == names
    assert (out / "bundles" / "teacher-U3" / "configs" / "inference.json").is_file()
    for name in names:  # the 3D teacher is scored per volume like the slice networks
        rows = (experiments.eval_dir(out, name) / "metrics.csv").read_text().splitlines()
        assert rows[0].startswith("case,dice") and len(rows) == 3
    real = evaluate_real.evaluate_grid(out)  # the real CT fixtures, the 3D teacher through its own 3D evaluation
    assert sorted(real) == sorted(names) and all(0.0 <= r["mean_dice"] <= 1.0 for r in real.values())
