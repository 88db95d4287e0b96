"""The shipped scale's recipes (grid `shipped`): made shipped_recipes.json, .md, .png and shipped_recipes_per_volume/.

    spleen-kd synthesize --out data/pretrained --cases 360 --seed 1000
    spleen-kd grid --out runs/shipped --grid shipped --dataset_dir data/pretrained     # one thread a run, two side by side
    spleen-kd evaluate --real --grid runs/shipped --json runs/shipped/real_ct.json
    python docs/results/shipped_recipes.py runs/shipped --out docs/results/shipped_recipes

Arms (configs/experiments/shipped.json): S1-fast alone (base), with DIST (the served model's recipe) and with
kd.json's default (InfoNCE at three scales + PMD), seeds 0-2, all from the shipped teacher. Comparisons: paired
t-test (and Wilcoxon) over the test volumes of seed-averaged per-volume 3D Dice, Holm over the three pairs; the
two real fixtures are reported per run as a regression check.
"""
import argparse
import json
import shutil
from pathlib import Path

from bundle.data.assets import REAL_CASES
from bundle.report import arms_figure, goal_marked
from bundle.stats import paired_comparisons

ARMS = {"base": "S1-fast-f50-base", "dist": "shipped-S1-fast-f50-dist", "thesis": "shipped-S1-fast-f50-thesis"}
LABELS = {"base": "S1-fast alone (seg)", "dist": "KD: DIST (shipped recipe)", "thesis": "KD: InfoNCE x3 + PMD (kd.json default)"}
PAIRS = [("dist", "base"), ("thesis", "base"), ("thesis", "dist")]
STUDENT_GOAL = 0.85

parser = argparse.ArgumentParser()
parser.add_argument("grid_out", help="the grid's output folder (with real_ct.json from evaluate --real --grid)")
parser.add_argument("--out", required=True, help="output stem: writes STEM.json, STEM.md, STEM.png, STEM_per_volume/")
args = parser.parse_args()
grid_out, stem = Path(args.grid_out), Path(args.out)
real = json.loads((grid_out / "real_ct.json").read_text())


def seconds(run: str) -> float:
    marker = grid_out / "stages" / run / "train.json"
    return json.loads(marker.read_text()).get("seconds", float("nan"))


# the grid's summary.json already holds each configuration's per-seed means and seed-averaged per-volume Dice
summary = json.loads((grid_out / "summary.json").read_text())
described = {entry["config"]: entry for entry in [summary["baseline"], *summary["variants"].values()]}
arms = {}
for arm, config in ARMS.items():
    entry = described[config]
    runs = [f"{config}-s{seed}" for seed in entry["seeds"]]
    arms[arm] = {"label": LABELS[arm], "runs": runs, "test_dice_per_seed": [round(d, 4) for d in entry["dice_per_seed"]],
                 "test_dice_mean": round(entry["dice_mean"], 4), "test_dice_std": round(entry["dice_std"], 4),
                 "train_seconds": [round(seconds(r)) for r in runs],
                 "real_ct": {run: {s: r["dice"] for s, r in real[run]["subjects"].items()} for run in runs if run in real},
                 "test_dice_per_volume": entry["dice_per_volume"]}

comparisons = paired_comparisons({arm: entry["test_dice_per_volume"] for arm, entry in arms.items()}, PAIRS)

# the rule fixed in the grid before its runs: an arm replaces DIST only if it beats it (paired t, p < 0.05)
beats_dist = {"thesis": (comparisons["thesis vs dist"]["gain"], comparisons["thesis vs dist"]["p_t"]),
              "base": (-comparisons["dist vs base"]["gain"], comparisons["dist vs base"]["p_t"])}
better = [arm for arm, (gain, p) in beats_dist.items() if gain > 0 and p < 0.05]
decision = (f"replace the served student with {better[0]}'s seed 0" if better else
            "keep the served student (no arm beats DIST on the synthetic test split at p < 0.05)")
results = {"command": __doc__.strip().splitlines()[2:6], "protocol": json.loads(
    Path("configs/experiments/shipped.json").read_text())["description"],
    "hardware": "2-core Intel Xeon, no GPU; each run on one thread, two runs side by side",
    "arms": arms, "comparisons": comparisons, "decision": decision}
stem.parent.mkdir(parents=True, exist_ok=True)
for arm in arms.values():
    fixtures = [d for run in arm["real_ct"].values() for d in run.values()]
    arm["real_ct_mean"] = round(sum(fixtures) / len(fixtures), 4)
    arm["real_ct_min"] = min(fixtures)
stem.with_suffix(".json").write_text(json.dumps(
    {**results, "arms": {name: {**arm, "test_dice_per_volume": {c: round(d, 4) for c, d in arm["test_dice_per_volume"].items()}}
                         for name, arm in arms.items()}}, indent=2, default=float))
per_volume = stem.parent / f"{stem.name}_per_volume"
per_volume.mkdir(exist_ok=True)
for arm in arms.values():
    for run in arm["runs"]:
        shutil.copy(grid_out / "eval" / run / "test" / "metrics.csv", per_volume / f"{run}.csv")


def fixture(arm: dict, subject: str) -> str:
    return goal_marked([v[subject] for v in arm["real_ct"].values()], STUDENT_GOAL)


lines = ["| arm | test Dice, mean ± std over seeds (per seed) | `example_ct_sm`, seeds 0 / 1 / 2 | DICOM series, seeds 0 / 1 / 2 | fixtures: mean (lowest) | train time a run (1 thread) |",
         "| --- | --- | --- | --- | --- | --- |"]
for arm in arms.values():
    lines.append(f"| {arm['label']} | {arm['test_dice_mean']:.3f} ± {arm['test_dice_std']:.3f} "
                 f"({', '.join(f'{d:.3f}' for d in arm['test_dice_per_seed'])}) | {fixture(arm, 'example_ct_sm')} | "
                 f"{fixture(arm, 'example_ct_dicom')} | {arm['real_ct_mean']:.3f} ({arm['real_ct_min']:.3f}) | "
                 f"{', '.join(f'{s / 60:.0f}' for s in arm['train_seconds'])} min |")
lines += ["", "| comparison (test split, seed-averaged per volume) | gain | p (paired t) | p (Wilcoxon) | p (Holm) |",
          "| --- | --- | --- | --- | --- |"]
for name, c in comparisons.items():
    lines.append(f"| {name} | {c['gain']:+.3f} | {c['p_t']:.2g} | {c['p_wilcoxon']:.2g} | {c['p_holm']:.2g} |")
lines += ["", f"Decision (rule fixed in the grid before its runs): {decision}.",
          f"Fixture Dice in bold: ≥ {STUDENT_GOAL} (the shipped student's goal)."]
stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

arms_figure({name: arm["test_dice_per_volume"] for name, arm in arms.items()},
            {name: {subject: [v[subject] for v in arm["real_ct"].values()] for subject in REAL_CASES} for name, arm in arms.items()},
            STUDENT_GOAL, stem.with_suffix(".png"))
