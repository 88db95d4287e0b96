r"""The served recipe's follow-up grids: made the .json, .md, .png and _per_volume/ of student_schedule{,_120},
ensemble_teacher, student_labels{,_confirm} and more_volumes.

    bash docs/results/student_schedule.sh        # spleen-kd grid --grid student_schedule, seeds 0-2 side by side
    OUT=runs/student_schedule_seeds34 SEEDS="3 4" bash docs/results/student_schedule.sh
    python docs/results/student_schedule.py runs/shipped runs/student_schedule --out docs/results/student_schedule \
        --more_seeds runs/student_schedule_seeds34

    bash docs/results/student_schedule_120.sh    # continues the 60-epoch runs to 120: seeds 0-2, then 3-4
    python docs/results/student_schedule.py runs/student_schedule runs/student_schedule_120 --study student_schedule_120 \
        --out docs/results/student_schedule_120 --more_seeds runs/student_schedule_120_seeds34

    bash docs/results/ensemble_teacher.sh        # DIST from the teacher ensemble: seeds 0-2 (seeds 3-4: stopped, resumable)
    python docs/results/student_schedule.py runs/student_schedule runs/ensemble_teacher --study ensemble_teacher \
        --out docs/results/ensemble_teacher

    GRID=student_labels bash docs/results/student_schedule.sh   # both recipes with labels on all volumes, seeds 0-2
    python docs/results/student_schedule.py runs/student_schedule runs/student_labels --study student_labels \
        --out docs/results/student_labels

    GRID=student_labels_confirm SEEDS="3 4 5" bash docs/results/student_schedule.sh   # both with all labels, new seeds
    python docs/results/student_schedule.py runs/student_labels runs/student_labels_confirm \
        --study student_labels_confirm --out docs/results/student_labels_confirm

    spleen-kd synthesize --out data/pretrained_more --cases 306 --first_case 360 --seed 1000   # 306 new volumes
    GRID=more_volumes MORE_TRAINING=data/pretrained_more bash docs/results/student_schedule.sh   # S1-fast alone on 612
    python docs/results/student_schedule.py runs/student_labels runs/more_volumes --study more_volumes \
        --out docs/results/more_volumes

Arms (configs/experiments/<study>.json), seeds 0-2, the same split and everything else but what the study changes:
the schedule studies run the served recipe (S1-fast + DIST from the shipped teacher) and S1-fast alone at the
earlier grid's schedule and a longer one, student_labels both with labels on all volumes (student_labels_confirm
compares those two on new seeds 3-5); ensemble_teacher runs the served recipe with the teacher ensemble as its
teacher; more_volumes trains S1-fast alone on twice the labelled volumes at the same steps. One deciding test (paired
t over the test volumes of seed-averaged per-volume 3D Dice) and reported ones (one Holm family); the real fixtures
per run as a regression check. Seeds 3-4 of the study grid's arms (--more_seeds) give the five-seed spread and enter
no test.
"""
import argparse
import json
import shutil
from pathlib import Path

import torch

from bundle.data.assets import REAL_CASES
from bundle.report import arms_figure, goal_marked
from bundle.stats import mean_std, paired_comparisons

COMMANDS = __doc__.strip().split("\n\n")
BASE = "S1-fast-f50-base"  # the student alone: the same configuration name in every grid
STUDENT_GOAL = 0.85


def decision_rule(adopt: str, adopt_reason: str, keep: str, keep_reason: str):
    """A study's decision, fixed before its runs: ``adopt`` only if the deciding comparison gains with paired t
    p < 0.05, else ``keep``; each outcome states the comparison (``*_reason``) and its figures."""

    def decision(gain: float, p: float) -> str:
        if gain > 0 and p < 0.05:
            return f"{adopt} ({adopt_reason}: {gain:+.3f}, paired t p {p:.2g})"
        return f"{keep} ({keep_reason}: {gain:+.3f}, paired t p {p:.2g}; the rule asks for a gain with p < 0.05)"

    return decision


def paired_study(command: str, tags: tuple, configs: tuple[str, ...], labels: tuple[str, ...], adopted: str, kept: str,
                 **wording) -> dict:
    """A study of one change to both recipes (student alone, served recipe): the earlier grid's arms (tag ``tags[0]``)
    against the study grid's (``tags[1]``); configs and labels in the order base-earlier, dist-earlier, base-study,
    dist-study. Decides the study's DIST against the earlier DIST; ``adopted`` / ``kept`` word the two outcomes."""
    before, after = tags
    decision = decision_rule(f"replace the served student with dist-{after}'s seed 0 and {adopted}",
                             f"DIST-{after} beats DIST-{before}", f"keep the served student and {kept}",
                             f"DIST-{after} vs DIST-{before}")
    return {"command": command.splitlines(), "decision": decision, **wording,
            "arms": {f"base-{before}": ("reference", configs[0], labels[0]),
                     f"dist-{before}": ("reference", configs[1], labels[1]),
                     f"base-{after}": ("study", configs[2], labels[2]), f"dist-{after}": ("study", configs[3], labels[3])},
            "deciding": [(f"dist-{after}", f"dist-{before}")],
            "reported": [(f"base-{after}", f"base-{before}"), (f"dist-{after}", f"base-{after}")]}


def schedule_study(command: str, epochs: tuple[int, int], dist_configs: tuple[str, str], labels: tuple[str, ...],
                   **wording) -> dict:
    """Both recipes at the earlier grid's schedule and the study's longer one (the student alone is BASE in both)."""
    short, long = epochs
    return paired_study(command, epochs, (BASE, dist_configs[0], BASE, dist_configs[1]), labels,
                        f"make {long} epochs configs/pretrained.json's student schedule",
                        f"the {short}-epoch schedule", **wording)


# study (its grid's name) -> arms (arm -> which grid folder, the grid's configuration name, label), the deciding
# comparison, the reported ones (one Holm family), the decision's wording, hardware and the spread's caption
STUDIES = {
    "student_schedule": schedule_study(
        COMMANDS[1], (30, 60), ("shipped-S1-fast-f50-dist", "long-S1-fast-f50-dist"),
        ("S1-fast alone, 30 epochs (grid shipped)", "S1-fast + DIST, 30 epochs (served until 0.6.0)",
         "S1-fast alone, 60 epochs", "S1-fast + DIST, 60 epochs (served since 0.6.0)"),
        hardware="2-core Intel Xeon, no GPU; each run on one torch thread (grid 'shipped': two side by side; "
                 "this grid: three side by side)",
        spread_note="Spread over five training seeds (seeds 3-4 run after the study; they enter no test):"),
    "student_schedule_120": schedule_study(
        COMMANDS[2], (60, 120), ("long-S1-fast-f50-dist", "e120-S1-fast-f50-dist"),
        ("S1-fast alone, 60 epochs (grid student_schedule)", "S1-fast + DIST, 60 epochs (served since 0.6.0)",
         "S1-fast alone, 120 epochs", "S1-fast + DIST, 120 epochs"),
        hardware="2-core Intel Xeon, no GPU; each run on one torch thread, three side by side (seeds 3-4: two); "
                 "the 120-epoch runs' training minutes are those of epochs 61-120, continued from the 60-epoch runs",
        spread_note="Spread over five training seeds (seeds 3-4 fixed in the grid before any run; they enter no test):"),
    "ensemble_teacher": {
        "command": COMMANDS[3].splitlines(),
        "decision": decision_rule("replace the served student with dist-ensemble's seed 0, commit the ensemble as "
                                  "models/teacher_ensemble/ and make it configs/pretrained.json's distillation teacher",
                                  "it beats the shipped teacher's DIST", "keep the served student and its teacher",
                                  "DIST from the ensemble vs from the shipped teacher"),
        "arms": {"base": ("reference", BASE, "S1-fast alone, 60 epochs (grid student_schedule)"),
                 "dist-shipped": ("reference", "long-S1-fast-f50-dist",
                                  "S1-fast + DIST from the shipped teacher, 60 epochs (served since 0.6.0)"),
                 "dist-ensemble": ("study", "ens-S1-fast-f50-dist", "S1-fast + DIST from the teacher ensemble, 60 epochs")},
        "deciding": [("dist-ensemble", "dist-shipped")], "reported": [("dist-ensemble", "base")],
        "hardware": "2-core Intel Xeon, no GPU; each run on one torch thread, three side by side (seeds 3-4: two)",
        "spread_note": "Spread over five training seeds (seeds 3-4 fixed in the grid before any run; they enter no test):"},
    "student_labels": paired_study(
        COMMANDS[4], ("f50", "f100"), (BASE, "long-S1-fast-f50-dist", "S1-fast-f100-base", "full-S1-fast-f100-dist"),
        ("S1-fast alone, labels on half (grid student_schedule)", "S1-fast + DIST, labels on half (served since 0.6.0)",
         "S1-fast alone, labels on all", "S1-fast + DIST, labels on all"),
        "make 1.0 configs/pretrained.json's student_fraction", "the student_fraction 0.5",
        hardware="2-core Intel Xeon, no GPU; each run on one torch thread, three side by side (beside two lower-priority "
                 "trainings of grid ensemble_teacher at the start)",
        spread_note=""),
    "student_labels_confirm": {
        "command": COMMANDS[5].splitlines(),
        "decision": decision_rule("serve grid student_labels' S1-fast-f100-base-s0, the student trained alone on all labels",
                                  "it beats DIST with all labels on seeds 3-5", "keep the served student",
                                  "the student alone vs DIST with all labels, seeds 3-5"),
        "arms": {"base-f100": ("study", "S1-fast-f100-base", "S1-fast alone, labels on all"),
                 "dist-f100": ("study", "full-S1-fast-f100-dist", "S1-fast + DIST, labels on all (served since 0.7.0)")},
        "deciding": [("base-f100", "dist-f100")], "reported": [],
        "hardware": "2-core Intel Xeon, no GPU; each run on one torch thread, three side by side; the student-alone "
                    "runs were interrupted after epoch 35 and resumed from their training state, so their training "
                    "minutes are those of epochs 36-60; the DIST runs had two lower-priority synthesis processes "
                    "beside them for their first 20 minutes",
        "spread_note": ""},
    # the grid's rule named the recipe served when its runs ended, read then from models/model.json: DIST on 306
    # (served in 0.7.0; student_labels_confirm kept it). Named here, as the served model is now this study's own.
    "more_volumes": {
        "command": COMMANDS[6].splitlines(),
        "decision": decision_rule("serve grid more_volumes' S1-fast-f100-base-s0, the student trained alone on 612 volumes",
                                  "it beats the served recipe on 306 volumes, dist-306", "keep the served student",
                                  "the student alone on 612 volumes vs the served recipe (dist-306) on 306"),
        "arms": {"base-306": ("reference", "S1-fast-f100-base", "S1-fast alone, 306 volumes (grid student_labels)"),
                 "dist-306": ("reference", "full-S1-fast-f100-dist", "S1-fast + DIST, 306 volumes (grid student_labels)"),
                 "base-612": ("study", "S1-fast-f100-base", "S1-fast alone, 612 volumes")},
        "deciding": [("base-612", "dist-306")], "reported": [("base-612", "base-306")],
        "hardware": "2-core Intel Xeon, no GPU; each run on one torch thread, three side by side",
        "spread_note": ""},
}

parser = argparse.ArgumentParser()
parser.add_argument("reference_grid", help="the earlier grid's output folder (the arms the study compares against), "
                    "with real_ct.json")
parser.add_argument("study_grid", help="the study grid's output folder, with real_ct.json")
parser.add_argument("--study", default="student_schedule", choices=sorted(STUDIES), help="which study (its grid's name)")
parser.add_argument("--out", required=True, help="output stem: writes STEM.json, STEM.md, STEM.png, STEM_per_volume/")
parser.add_argument("--more_seeds", help="the study grid's output folder of seeds 3-4, with real_ct.json: the study "
                    "arms' spread over five seeds, outside every test")
args = parser.parse_args()
study = STUDIES[args.study]
ARMS, DECIDING, REPORTED = study["arms"], study["deciding"], study["reported"]
folders = {"reference": Path(args.reference_grid), "study": Path(args.study_grid)}
stem = Path(args.out)


def described(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    # a grid without variants compares nothing: its baseline is empty and its configurations are under "others"
    entries = [summary["baseline"], *summary["variants"].values(), *summary["others"].values()]
    return {entry["config"]: entry for entry in entries if entry}


def best_validation(folder: Path, run: str) -> dict:
    """The kept checkpoint's validation Dice and epoch, and the epochs trained, from the run's training state."""
    state = torch.load(folder / "models" / run / "training_state.pt", map_location="cpu", weights_only=False)
    return {"dice": round(float(state["best_model"]["best_metric"]), 4),
            "epoch": int(state["best_model"]["best_metric_epoch"]), "epochs": int(state["trainer"]["epoch"])}


def trainings(folder: Path, config: str) -> dict:
    """A grid configuration's runs in ``folder``: per-seed test Dice, validation, training time, fixture Dice."""
    entry, real = described(folder)[config], json.loads((folder / "real_ct.json").read_text())
    runs = [f"{config}-s{seed}" for seed in entry["seeds"]]
    return {"runs": runs, "test_dice_per_seed": [round(d, 4) for d in entry["dice_per_seed"]],
            "test_dice_mean": round(entry["dice_mean"], 4), "test_dice_std": round(entry["dice_std"], 4),
            "best_validation": [best_validation(folder, run) for run in runs],
            "train_seconds": [round(json.loads((folder / "stages" / run / "train.json").read_text())["seconds"])
                              for run in runs],
            "real_ct": {run: {s: r["dice"] for s, r in real[run]["subjects"].items()} for run in runs},
            "test_dice_per_volume": entry["dice_per_volume"]}


arms = {}
for arm, (grid, config, label) in ARMS.items():
    arms[arm] = {"label": label, "grid_folder": str(folders[grid]), **trainings(folders[grid], config)}

per_volume_dice = {arm: entry["test_dice_per_volume"] for arm, entry in arms.items()}
deciding = paired_comparisons(per_volume_dice, DECIDING)
reported = paired_comparisons(per_volume_dice, REPORTED)
(decisive,) = deciding.values()
gain, p = decisive["gain"], decisive["p_t"]
decision = study["decision"](gain, p)
grid = json.loads((Path("configs/experiments") / f"{args.study}.json").read_text())
results = {"command": study["command"], "protocol": grid["description"], "rules": grid["notes"],
           "hardware": study["hardware"],
           "arms": arms, "deciding_comparison": deciding, "reported_comparisons": reported, "decision": decision}


def fixture_summary(entry: dict) -> None:
    fixtures = [d for run in entry["real_ct"].values() for d in run.values()]
    entry["real_ct_mean"], entry["real_ct_min"] = round(sum(fixtures) / len(fixtures), 4), min(fixtures)


for arm in arms.values():
    fixture_summary(arm)
# seeds 3-4 of the long arms: each training's figures beside seeds 0-2's, the spread over five; no test
spread = {}
if args.more_seeds:
    for arm in [a for a, (grid, _, _) in ARMS.items() if grid == "study"]:
        more = trainings(Path(args.more_seeds), ARMS[arm][1])
        per_seed = arms[arm]["test_dice_per_seed"] + more["test_dice_per_seed"]
        mean, std, _ = mean_std(per_seed)
        spread[arm] = {"label": ARMS[arm][2], "grid_folder": args.more_seeds, "runs": arms[arm]["runs"] + more["runs"],
                       "more_runs": more["runs"], "test_dice_per_seed": per_seed,
                       "test_dice_mean": round(mean, 4), "test_dice_std": round(std, 4),
                       "best_validation": arms[arm]["best_validation"] + more["best_validation"],
                       "real_ct": {**arms[arm]["real_ct"], **more["real_ct"]}}
        fixture_summary(spread[arm])
    results["five_seed_spread"] = spread
stem.parent.mkdir(parents=True, exist_ok=True)
stem.with_suffix(".json").write_text(json.dumps(
    {**results, "arms": {name: {**arm, "test_dice_per_volume": {c: round(d, 4) for c, d in arm["test_dice_per_volume"].items()}}
                         for name, arm in arms.items()}}, indent=2, default=float))
per_volume = stem.parent / f"{stem.name}_per_volume"
per_volume.mkdir(exist_ok=True)
copies = [(arm, entry["grid_folder"], entry["runs"]) for arm, entry in arms.items()]
copies += [(arm, entry["grid_folder"], entry["more_runs"]) for arm, entry in spread.items()]
for arm, folder, runs in copies:
    for run in runs:
        shutil.copy(Path(folder) / "eval" / run / "test" / "metrics.csv", per_volume / f"{arm}-{run.rsplit('-', 1)[1]}.csv")


def fixture(arm: dict, subject: str) -> str:
    return goal_marked([v[subject] for v in arm["real_ct"].values()], STUDENT_GOAL)


seeds = " / ".join(run.rsplit("-s", 1)[1] for run in next(iter(arms.values()))["runs"])
lines = ["| arm | test Dice, mean ± std over seeds (per seed) | best validation Dice (epoch) by seed | "
         f"`example_ct_sm`, seeds {seeds} | DICOM series, seeds {seeds} | fixtures: mean (lowest) | train min a run |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
for arm in arms.values():
    validation = " / ".join("{dice:.3f} ({epoch})".format(**v) for v in arm["best_validation"])
    lines.append(f"| {arm['label']} | {arm['test_dice_mean']:.3f} ± {arm['test_dice_std']:.3f} "
                 f"({', '.join(f'{d:.3f}' for d in arm['test_dice_per_seed'])}) | {validation} | "
                 f"{fixture(arm, 'example_ct_sm')} | {fixture(arm, 'example_ct_dicom')} | "
                 f"{arm['real_ct_mean']:.3f} ({arm['real_ct_min']:.3f}) | "
                 f"{', '.join(f'{s / 60:.0f}' for s in arm['train_seconds'])} |")
lines += ["", "| comparison (test split, seed-averaged per volume) | gain | p (paired t) | p (Wilcoxon) | p (Holm) |",
          "| --- | --- | --- | --- | --- |"]
for label, family in (("deciding", deciding), ("reported", reported)):
    for pair, c in family.items():
        lines.append(f"| {pair} ({label}) | {c['gain']:+.3f} | {c['p_t']:.2g} | {c['p_wilcoxon']:.2g} | "
                     f"{c['p_holm']:.2g} |")
lines += ["", f"Decision (rule fixed in the grid before its runs): {decision}.",
          "Holm: the deciding test is a family of one; " + {2: "the two reported tests are one family.",
                                                     1: "the reported test is a family of one.",
                                                     0: "nothing else is tested."}[len(REPORTED)],
          f"Fixture Dice in bold: ≥ {STUDENT_GOAL} (the shipped student's goal)."]
if spread:
    lines += ["", study["spread_note"], "",
              "| arm | test Dice, mean ± std over seeds 0-4 (per seed) | `example_ct_sm`, seeds 0-4 | DICOM series, seeds 0-4 | "
              "fixtures: mean (lowest) |", "| --- | --- | --- | --- | --- |"]
    for arm in spread.values():
        lines.append(f"| {arm['label']} | {arm['test_dice_mean']:.3f} ± {arm['test_dice_std']:.3f} "
                     f"({', '.join(f'{d:.3f}' for d in arm['test_dice_per_seed'])}) | {fixture(arm, 'example_ct_sm')} | "
                     f"{fixture(arm, 'example_ct_dicom')} | {arm['real_ct_mean']:.3f} ({arm['real_ct_min']:.3f}) |")
stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

arms_figure(per_volume_dice,
            {name: {subject: [v[subject] for v in arm["real_ct"].values()] for subject in REAL_CASES} for name, arm in arms.items()},
            STUDENT_GOAL, stem.with_suffix(".png"))
