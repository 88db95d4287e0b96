"""The teacher-choice study (configs/experiments/teacher_choice/study.json): made teacher_choice.json, .md, .png
and teacher_choice_per_volume/.

    spleen-kd synthesize --out data/pretrained --cases 360 --seed 1000
    spleen-kd grid --out runs/shipped --grid shipped --dataset_dir data/pretrained   # its split: datalists/split0-f50.json
    WORKERS=3 bash docs/results/teacher_choice.sh                                      # 8 trainings, two or three side by side
    python docs/results/teacher_choice.py runs/teacher_choice --out docs/results/teacher_choice

Seeds 0 and 1 of the shipped recipe (T1-128) were trained before the study: seed 0 was the shipped teacher until 0.8.0
(its per-volume test Dice as shipped_synthetic_test.json gave them while it was shipped, kept in
teacher_seeds.json), seed 1 is teacher_seeds.json's run; seed 2 and the
new arms' seeds (0 and 1) come from the study's runs. Comparisons and the decision rule are the study file's.
The extension (T1-160, fixed after the study's results and before its runs) is one more arm with one more
paired test against T1-128, outside the study's Holm family.
"""
import argparse
import csv
import json
import shutil
from pathlib import Path

from bundle.data.assets import REAL_CASES
from bundle.report import TEACHER_TABLE_HEADER, arms_figure, teacher_arm, teacher_arm_row, teacher_run
from bundle.networks import from_definition
from bundle.stats import paired_comparisons
from bundle.workflows import config_files, network_definition

STUDY = Path("configs/experiments/teacher_choice/study.json")
RESULTS = Path("docs/results")
TEACHER_GOAL = 0.90
PAIRS = [("T1-half-128", "T1-128"), ("T1-half-160", "T1-half-128"), ("T1-half-160", "T1-128")]

parser = argparse.ArgumentParser()
parser.add_argument("runs", help="the study's output folder (docs/results/teacher_choice.sh writes it)")
parser.add_argument("--out", required=True, help="output stem: writes STEM.json, STEM.md, STEM.png, STEM_per_volume/")
args = parser.parse_args()
runs, stem = Path(args.runs), Path(args.out)
study = json.loads(STUDY.read_text())
EXTENSION = study["extension"]
EXT_ARM = EXTENSION["arm"]
ARMS = {**study["arms"], EXT_ARM: EXTENSION}  # each with its "configs" and "note"
ARM_SEEDS = {**study["seeds"], EXT_ARM: EXTENSION["seeds"]}
TEACHER_SEEDS = json.loads((RESULTS / "teacher_seeds.json").read_text())  # seeds 0 and 1 of the shipped recipe


def parameters(arm: str) -> int:
    """The teacher network of the arm's configs (merged as `spleen-kd train teacher` merges them), counted."""
    files = config_files("teacher", *ARMS[arm]["configs"])
    return sum(p.numel() for p in from_definition(network_definition(files, "teacher")).parameters())


def earlier_seed(seed: int) -> dict:
    """Seeds 0 and 1 of the shipped recipe, measured before the study (the same split and evaluation)."""
    if seed == 0:
        own = TEACHER_SEEDS["seed_0_shipped"]
        return {"source": "models/teacher/model.pt until 0.8.0 (the shipped teacher then; 2-core AMD EPYC, two threads)",
                "test_dice_per_volume": own["test_dice_per_volume"], "best_epoch": own["best_epoch"],
                "validation_dice_best": own["validation_dice_best"], "real_ct": own["real_ct"], "train_seconds": None}
    own = TEACHER_SEEDS["seed_1"]
    by_epoch = own["validation_dice_by_epoch"]
    return {"source": "docs/results/teacher_seeds.json (Intel Xeon, two threads)",
            "test_dice_per_volume": own["test_dice_per_volume"], "best_epoch": own["best_epoch"],
            "validation_dice_best": by_epoch[str(own["best_epoch"])], "real_ct": own["real_ct"],
            "train_seconds": round(TEACHER_SEEDS["train_minutes"] * 60)}


def study_run(arm: str, seed: int) -> dict:
    side_by_side = "three" if arm == EXT_ARM else "two"
    return teacher_run(runs / f"{arm}-s{seed}", runs / f"{arm}-s{seed}.log",
                       f"Intel Xeon, one thread, {side_by_side} runs side by side")


arms = {arm: teacher_arm(ARMS[arm]["note"], parameters(arm),
                         {seed: earlier_seed(seed) if arm == "T1-128" and seed < 2 else study_run(arm, seed)
                          for seed in ARM_SEEDS[arm]}) for arm in ARMS}

per_volume_dice = {name: arm["test_dice_per_volume"] for name, arm in arms.items()}
comparisons = paired_comparisons(per_volume_dice, PAIRS)
extension = paired_comparisons(per_volume_dice, [(EXT_ARM, "T1-128")])  # one test: its Holm p is its own p


def best_validation_seed(arm: str) -> int:
    """The seed a replacing arm ships: its best synthetic validation Dice (both rules say so)."""
    return max(arms[arm]["seeds"], key=lambda s: arms[arm]["seeds"][s]["validation_dice_best"])


# the study's rule, fixed before its runs: the shipped recipe is replaced only by an arm that beats it (Holm p < 0.05)
better = [a for a, b in PAIRS if b == "T1-128" and comparisons[f"{a} vs {b}"]["gain"] > 0
          and comparisons[f"{a} vs {b}"]["p_holm"] < 0.05]
if better:
    winner = max(better, key=lambda a: arms[a]["test_dice_mean"])
    decision = (f"replace the shipped teacher recipe with {winner}; its seed {best_validation_seed(winner)} "
                "(best validation Dice) is the teacher to ship")
else:
    level = [a for a, b in PAIRS if b == "T1-128" and comparisons[f"{a} vs {b}"]["p_holm"] >= 0.05]
    decision = ("keep the shipped teacher (no arm beats T1-128 at Holm p < 0.05)"
                + (f"; level with it: {', '.join(level)}" if level else ""))
# the extension's rule, fixed before its runs: T1-160 replaces the shipped recipe only if it beats it (p < 0.05)
ext = extension[f"{EXT_ARM} vs T1-128"]
if ext["gain"] > 0 and ext["p_t"] < 0.05:
    extension_decision = (f"replace the shipped teacher recipe with {EXT_ARM}; its seed {best_validation_seed(EXT_ARM)} "
                          "(best validation Dice) is the teacher to ship and the shipped students are distilled again from it")
else:
    extension_decision = f"keep the shipped teacher ({EXT_ARM} does not beat T1-128 at p < 0.05)"

stem.parent.mkdir(parents=True, exist_ok=True)
stem.with_suffix(".json").write_text(json.dumps(
    {"commands": [line.strip() for line in __doc__.strip().splitlines()[3:7]], "study": str(STUDY),
     "protocol": {k: study[k] for k in ("data", "schedule", "evaluation", "decision", "hardware")},
     "extension_protocol": {k: EXTENSION[k] for k in ("fixed_before_results", "evaluation", "decision")},
     "arms": {name: {**arm, "test_dice_per_volume": {c: round(d, 4) for c, d in arm["test_dice_per_volume"].items()}}
              for name, arm in arms.items()},
     "comparisons": comparisons, "decision": decision,
     "extension_comparison": extension, "extension_decision": extension_decision}, indent=2, default=float))
per_volume = stem.parent / f"{stem.name}_per_volume"
per_volume.mkdir(exist_ok=True)
for arm, entry in arms.items():
    for seed, run in entry["seeds"].items():
        if run["source"].startswith(str(runs)):
            shutil.copy(runs / f"{arm}-s{seed}" / "eval" / "teacher" / "test" / "metrics.csv",
                        per_volume / f"{arm}-s{seed}.csv")
with open(per_volume / "seed_averaged.csv", "w", newline="") as stream:
    writer = csv.writer(stream)
    writer.writerow(["case", *arms])
    for case in arms["T1-128"]["test_dice_per_volume"]:
        writer.writerow([case, *(f"{arm['test_dice_per_volume'][case]:.4f}" for arm in arms.values())])


lines = TEACHER_TABLE_HEADER + [teacher_arm_row(name, arm, TEACHER_GOAL) for name, arm in arms.items()]
lines += ["", "| comparison (36 test volumes, seed-averaged per volume) | gain | p (paired t) | p (Wilcoxon) | p (Holm, 3) |",
          "| --- | --- | --- | --- | --- |"]
for name, c in comparisons.items():
    lines.append(f"| {name} | {c['gain']:+.3f} | {c['p_t']:.2g} | {c['p_wilcoxon']:.2g} | {c['p_holm']:.2g} |")
for name, c in extension.items():
    lines.append(f"| {name} (extension: one test, outside the Holm family) | {c['gain']:+.3f} | {c['p_t']:.2g} "
                 f"| {c['p_wilcoxon']:.2g} | – |")
lines += ["", f"Decision (rule fixed in {STUDY} before the runs): {decision}.",
          f"Extension decision (rule fixed before its runs): {extension_decision}.",
          f"Fixture Dice in bold: ≥ {TEACHER_GOAL} (the shipped teacher's goal). Train minutes: seed 0 of T1-128 is the "
          "shipped teacher (trained on another machine); seed 1 ran alone on two threads, every other run on one thread "
          f"beside one other run, {EXT_ARM}'s three seeds side by side (its seeds 0 and 1 were interrupted after epoch 5 "
          "and resumed; their minutes are the sums of the logged epoch times)."]
stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

arms_figure({name: arm["test_dice_per_volume"] for name, arm in arms.items()},
            {name: {subject: [s["real_ct"][subject] for s in arm["seeds"].values()] for subject in REAL_CASES} for name, arm in arms.items()},
            TEACHER_GOAL, stem.with_suffix(".png"))
