"""The teacher on twice the labelled volumes (configs/experiments/teacher_choice/more_volumes.json): makes
teacher_more_volumes.json, .md, .png and teacher_more_volumes_per_volume/.

    GRID=more_volumes MORE_TRAINING=data/pretrained_more bash docs/results/student_schedule.sh   # writes its split
    bash docs/results/teacher_more_volumes.sh                                                   # seeds 0-2
    python docs/results/teacher_more_volumes.py runs/teacher_more_volumes --out docs/results/teacher_more_volumes

The reference arm, the shipped recipe T1-128 on 306 volumes (seeds 0-2, seed 0 the teacher shipped until 0.8.0), is
read from teacher_choice.json: the same 36 test volumes, evaluated the same way. One paired test and the study file's rule.
``--arm`` names another arm of the same layout (the analysis was exercised with teacher_choice's T1-160).
"""
import argparse
import json
import shutil
from pathlib import Path

from bundle.data.assets import REAL_CASES
from bundle.report import TEACHER_TABLE_HEADER, arms_figure, teacher_arm, teacher_arm_row, teacher_run
from bundle.stats import paired_comparisons

STUDY = Path("configs/experiments/teacher_choice/more_volumes.json")
REFERENCE = Path("docs/results/teacher_choice.json")
TEACHER_GOAL = 0.90

parser = argparse.ArgumentParser()
parser.add_argument("runs", help="the study's output folder (docs/results/teacher_more_volumes.sh writes it)")
parser.add_argument("--out", required=True, help="output stem: writes STEM.json, STEM.md, STEM.png, STEM_per_volume/")
parser.add_argument("--arm", default="T1-128-612", help="the study arm's job name in RUNS")
args = parser.parse_args()
runs, stem = Path(args.runs), Path(args.out)
study = json.loads(STUDY.read_text())
ARM = args.arm


reference = json.loads(REFERENCE.read_text())["arms"]["T1-128"]
study_seeds = study["seeds"].get(ARM, study["seeds"]["T1-128-612"])
# the study arm's network is the reference's (the same recipe): both count its parameters
arms = {"T1-128": teacher_arm(reference["note"] + " (306 training volumes; teacher_choice.json)",
                              reference["parameters"], reference["seeds"]),
        ARM: teacher_arm(study["arms"].get(ARM, study["arms"]["T1-128-612"])["note"], reference["parameters"],
                         {seed: teacher_run(runs / f"{ARM}-s{seed}", runs / f"{ARM}-s{seed}.log",
                                            "Intel Xeon, one thread, three runs side by side") for seed in study_seeds})}
per_volume_dice = {name: arm["test_dice_per_volume"] for name, arm in arms.items()}
comparison = paired_comparisons(per_volume_dice, [(ARM, "T1-128")])
(result,) = comparison.values()

# the rule fixed in the study file before its runs
if result["gain"] > 0 and result["p_t"] < 0.05:
    chosen = max(arms[ARM]["seeds"], key=lambda s: arms[ARM]["seeds"][s]["validation_dice_best"])
    decision = (f"replace the shipped teacher with {ARM}'s seed {chosen} (its best validation Dice); "
                f"{ARM} beats T1-128: {result['gain']:+.3f}, paired t p {result['p_t']:.2g}")
else:
    decision = (f"keep the shipped teacher ({ARM} vs T1-128: {result['gain']:+.3f}, paired t p {result['p_t']:.2g}; "
                "the rule asks for a gain with p < 0.05)")

stem.parent.mkdir(parents=True, exist_ok=True)
stem.with_suffix(".json").write_text(json.dumps(
    {"commands": [line.strip() for line in __doc__.strip().splitlines()[3:6]], "study": str(STUDY),
     "protocol": {k: study[k] for k in ("fixed_before_results", "data", "schedule", "evaluation", "decision", "hardware")},
     "arms": {name: {**arm, "test_dice_per_volume": {c: round(d, 4) for c, d in arm["test_dice_per_volume"].items()}}
              for name, arm in arms.items()},
     "comparison": comparison, "decision": decision}, indent=2, default=float))
per_volume = stem.parent / f"{stem.name}_per_volume"
per_volume.mkdir(exist_ok=True)
for seed in study_seeds:
    shutil.copy(runs / f"{ARM}-s{seed}" / "eval" / "teacher" / "test" / "metrics.csv", per_volume / f"{ARM}-s{seed}.csv")


lines = TEACHER_TABLE_HEADER + [teacher_arm_row(name, arm, TEACHER_GOAL) for name, arm in arms.items()]
lines += ["", "| comparison (36 test volumes, seed-averaged per volume) | gain | p (paired t) | p (Wilcoxon) |",
          "| --- | --- | --- | --- |"]
lines += [f"| {name} | {c['gain']:+.3f} | {c['p_t']:.2g} | {c['p_wilcoxon']:.2g} |" for name, c in comparison.items()]
lines += ["", f"Decision (rule fixed in {STUDY} before the runs): {decision}.",
          f"Fixture Dice in bold: ≥ {TEACHER_GOAL:.2f} (the teacher's goal); the fixtures are a regression check, not the "
          "evaluation. Train minutes: T1-128's as teacher_choice.json gives them (seed 0, the teacher shipped until 0.8.0, was "
          "trained on another machine)."]
stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

arms_figure(per_volume_dice,
            {name: {subject: [s["real_ct"][subject] for s in arm["seeds"].values()] for subject in REAL_CASES}
             for name, arm in arms.items()},
            TEACHER_GOAL, stem.with_suffix(".png"))
