"""Does the synthetic test split rank trainings as the real fixtures do? Made transfer_correlation.json, .md, .png.

    python docs/results/transfer_correlation.py --out docs/results/transfer_correlation

Exploratory, written after the results it reads and deciding nothing: every student training at the shipped scale
(grids shipped, student_schedule, student_schedule_120 and their seeds 3-4; the committed shipped_recipes.json,
student_schedule.json and student_schedule_120.json), each training's mean per-volume 3D Dice on the 36 synthetic
test volumes against its Dice on each real fixture, Spearman's rank correlation. The trainings are not independent
(the 60- and 120-epoch runs continue the shorter ones; all share one teacher and one split), so the p-values are
optimistic and the figure is a description, not a test.
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from scipy import stats  # noqa: E402

from bundle.data.assets import REAL_CASES  # noqa: E402

RESULTS = Path("docs/results")
SOURCES = ["shipped_recipes.json", "student_schedule.json", "student_schedule_120.json"]

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True, help="output stem: writes STEM.json, STEM.md, STEM.png")
stem = Path(parser.parse_args().out)

trainings = {}  # (grid folder, run) -> {"arm", "test", fixture: Dice}; a run met in two files counts once
for source in SOURCES:
    results = json.loads((RESULTS / source).read_text())
    groups = [(arm, entry, entry["runs"]) for arm, entry in results["arms"].items()]
    groups += [(arm, entry, entry["more_runs"]) for arm, entry in results.get("five_seed_spread", {}).items()]
    for arm, entry, runs in groups:
        folder = entry.get("grid_folder", "runs/shipped")
        for run in runs:
            test = entry["test_dice_per_seed"][entry["runs"].index(run)]
            # arm keys say the recipe and its epochs (dist-60); grid shipped's arms are 30-epoch runs
            label = arm if "-" in arm else f"{arm}-30"
            trainings[(folder, run)] = {"arm": label, "test": test, **entry["real_ct"][run]}

tests = [t["test"] for t in trainings.values()]
correlation = {}
for subject in REAL_CASES:
    rho, p = stats.spearmanr(tests, [t[subject] for t in trainings.values()])
    correlation[subject] = {"spearman": round(float(rho), 3), "p": float(f"{p:.2g}")}
stem.with_suffix(".json").write_text(json.dumps(
    {"command": __doc__.strip().split("\n\n")[1].strip(), "protocol": __doc__.strip().split("\n\n")[2].replace("\n", " "),
     "sources": SOURCES, "trainings": len(trainings), "spearman_test_vs_fixture": correlation,
     "per_training": {f"{folder}/{run}": t for (folder, run), t in trainings.items()}}, indent=2))
lines = ["| fixture | Spearman ρ, synthetic test Dice vs fixture Dice | p (optimistic: trainings share history) | trainings |",
         "| --- | --- | --- | --- |"]
lines += [f"| `{subject}` | {c['spearman']:+.2f} | {c['p']:.2g} | {len(trainings)} |" for subject, c in correlation.items()]
stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

fig, axes = plt.subplots(1, len(REAL_CASES), figsize=(5 * len(REAL_CASES), 4.2), sharey=True, squeeze=False)
arms = sorted({t["arm"] for t in trainings.values()}, key=lambda a: (a.split("-")[0], int(a.split("-")[1])))
markers = dict(zip(arms, "os^Dv<>ph*X+"))
for ax, subject in zip(axes[0], REAL_CASES):
    for arm in arms:
        chosen = [t for t in trainings.values() if t["arm"] == arm]
        ax.scatter([t["test"] for t in chosen], [t[subject] for t in chosen], marker=markers[arm], label=arm, alpha=0.8)
    ax.set_title(f"{subject}: Spearman {correlation[subject]['spearman']:+.2f}")
    ax.set_xlabel("synthetic test Dice (mean over 36 volumes)")
axes[0][0].set_ylabel("Dice on the real fixture")
fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=8,
           title="recipe-epochs (base: alone;\nthesis: InfoNCE x3 + PMD)", title_fontsize=7)
fig.tight_layout(rect=(0, 0, 0.84, 1))
fig.savefig(stem.with_suffix(".png"), dpi=120)
