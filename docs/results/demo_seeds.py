"""The demo (`spleen-kd demo`) over seeds and torch thread counts: made demo_seeds.json, .md and .png.

    for s in 0 1 2; do spleen-kd demo --out runs/demo_s${s}_t2 --seed $s; done
    for s in 0 1 2; do OMP_NUM_THREADS=1 spleen-kd demo --out runs/demo_s${s}_t1 --seed $s; done
    python docs/results/demo_seeds.py runs/demo_s*_t* --out docs/results/demo_seeds

Per run, the KD student is compared with the baseline over that run's test volumes (paired t on
per-volume 3D Dice, bundle.stats.paired_t). Each folder's summary.json holds its seed (in its data note), torch thread count and stage times; the
wall time of the whole command is read from OUT.time (`/usr/bin/time -v` output) when present.
"""
import argparse
import json
import re
import statistics
from pathlib import Path

from bundle.stats import paired_t, read_volume_metrics

GOAL = 0.70  # the KD student's Dice on each real fixture

parser = argparse.ArgumentParser()
parser.add_argument("runs", nargs="+", help="demo output folders")
parser.add_argument("--out", required=True, help="output stem: writes STEM.json, STEM.md, STEM.png")
args = parser.parse_args()


def wall_seconds(folder: Path) -> float | None:
    timing = folder.with_suffix(".time")
    if not timing.is_file():
        return None
    match = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", timing.read_text())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def per_volume_dice(folder: Path, stage: str) -> dict[str, float]:
    return {case: m["dice"] for case, m in read_volume_metrics(folder / "eval" / stage / "test" / "metrics.csv").items()}


rows = []
for folder in map(Path, args.runs):
    summary = json.loads((folder / "summary.json").read_text())
    seed = int(re.search(r"\(seed (\d+)\)", summary["data"]).group(1))
    real = {name: {s: round(r["dice"], 4) for s, r in entry["subjects"].items()}
            for name, entry in summary["real_ct"].items()}
    kd, base = per_volume_dice(folder, "kd"), per_volume_dice(folder, "student")
    test = paired_t(kd, base)
    rows.append({"run": folder.name, "seed": seed, "torch_threads": summary["compute"]["torch_threads"],
                 "wall_seconds": wall_seconds(folder), "stage_seconds": summary["compute"]["seconds"],
                 "test_volumes": summary["teacher"]["volumes"],
                 "test_dice": {name: round(summary[name]["dice"], 4) for name in ("teacher", "student", "kd_student")},
                 "kd_minus_baseline_test": {"mean": round(statistics.mean(kd[c] - base[c] for c in kd), 4),
                                            "paired_t_p": round(test.p, 4), "volumes": test.n},
                 "test_dice_per_volume": {"student": {c: round(v, 4) for c, v in base.items()},
                                          "kd_student": {c: round(v, 4) for c, v in kd.items()}},
                 "real_ct": real, "kd_meets_goal": all(d >= GOAL for d in real["kd_student"].values())})
rows.sort(key=lambda r: (r["torch_threads"], r["seed"]))
subjects = list(rows[0]["real_ct"]["kd_student"])
overall = {name: round(statistics.mean(r["test_dice"][name] for r in rows), 4) for name in ("teacher", "student", "kd_student")}
result = {"runs": rows, "goal_kd_real_each": GOAL, "all_runs_meet_goal": all(r["kd_meets_goal"] for r in rows),
          "mean_test_dice": overall,
          "mean_real_dice": {name: {s: round(statistics.mean(r["real_ct"][name][s] for r in rows), 4) for s in subjects}
                             for name in ("teacher", "student", "kd_student")}}
stem = Path(args.out)
stem.with_suffix(".json").write_text(json.dumps(result, indent=2))

header = ("| seed | threads | wall | test Dice: baseline / KD / teacher | KD − baseline (p) | "
          + " | ".join(f"{s}: baseline / KD" for s in subjects) + " | KD ≥ 0.70 on each |")
lines = [header, "|" + " --- |" * (6 + len(subjects))]
for r in rows:
    wall = f"{r['wall_seconds'] / 60:.1f} min" if r["wall_seconds"] else "—"
    t = r["test_dice"]
    lines.append(f"| {r['seed']} | {r['torch_threads']} | {wall} | {t['student']:.3f} / {t['kd_student']:.3f} / "
                 f"{t['teacher']:.3f} | {r['kd_minus_baseline_test']['mean']:+.3f} ({r['kd_minus_baseline_test']['paired_t_p']:.2g}) | "
                 + " | ".join(f"{r['real_ct']['student'][s]:.3f} / **{r['real_ct']['kd_student'][s]:.3f}**"
                                                  for s in subjects) + f" | {'yes' if r['kd_meets_goal'] else 'no'} |")
stem.with_suffix(".md").write_text("\n".join(lines) + "\n")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, len(subjects), figsize=(5 * len(subjects), 3.6), sharey=True)
for ax, subject in zip(axes, subjects):
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["real_ct"]["student"][subject] for r in rows], 0.4, label="baseline student")
    ax.bar([i + 0.2 for i in x], [r["real_ct"]["kd_student"][subject] for r in rows], 0.4, label="KD student")
    ax.axhline(rows[0]["real_ct"]["teacher"][subject], color="k", lw=1, ls="--", label="shipped teacher")
    ax.axhline(GOAL, color="r", lw=1, ls=":", label=f"goal {GOAL}")
    ax.set_xticks(list(x), [f"s{r['seed']} t{r['torch_threads']}" for r in rows])
    ax.set_title(f"{subject} (per-volume 3D Dice)")
    ax.set_ylim(0, 1)
axes[0].legend(loc="lower left", fontsize=8)
fig.tight_layout()
fig.savefig(stem.with_suffix(".png"), dpi=110)
print(stem.with_suffix(".md").read_text())
