"""The 3D-teacher study (configs/experiments/teacher_3d.json) summarised: teacher_3d.json, .md, .png and the
per-volume CSVs in teacher_3d_per_volume/.

    spleen-kd synthesize --out data --cases 40 --seed 0
    spleen-kd grid --out OUT --grid teacher_3d --dataset_dir data 2>&1 | ts > OUT/grid.log
    spleen-kd evaluate --real --grid OUT --json OUT/real_ct.json
    python docs/results/teacher_3d.py --grid_out OUT --log OUT/grid.log --real OUT/real_ct.json

Per arm: per-seed mean over the 12 test volumes, mean ± std over seeds; comparisons: paired t-test over
the test volumes of seed-averaged Dice, Holm over the three comparisons. Cost: each student run's
median epoch time (from the grid's log lines, each prefixed with the wall-clock time) and, for the 3D
teacher, the time from the run's start to its first epoch (building the datasets: caching the volumes
and, for U3, running the teacher once per volume).
"""
import argparse
import datetime
import json
import re
import shutil
import statistics
from pathlib import Path

from bundle.stats import holm, mean_std, paired_t, read_volume_metrics

ARMS = {"base": "S1-f50-base", "T1 dist+unl": "T1-S1-f50-dist+unl", "U3 dist+unl": "U3-S1-f50-dist+unl"}
TEACHERS = {"teacher T1 (2D)": "teacher-T1", "teacher U3 (3D)": "teacher-U3"}
COMPARISONS = [("U3 dist+unl", "T1 dist+unl"), ("U3 dist+unl", "base"), ("T1 dist+unl", "base")]


def dice_of(out: Path, run: str) -> dict[str, float]:
    return {case: row["dice"] for case, row in read_volume_metrics(out / "eval" / run / "test" / "metrics.csv").items()}


def timings(log: Path) -> dict[str, dict]:
    """Per run: median seconds per training epoch, epochs, and seconds from its start to its first epoch."""
    runs, current, started = {}, None, None
    for line in log.read_text().splitlines():
        stamp = line[:8]
        if re.match(r"\d\d:\d\d:\d\d \[\S+/train\] running", line):
            current = line.split("[", 1)[1].split("/", 1)[0]
            started = stamp
            runs[current] = {"epoch_s": [], "first_epoch_at": None, "start": stamp}
        elif current and "ComposedLossTrainer - INFO - Epoch[" in line or current and "SupervisedTrainer - INFO - Epoch[" in line:
            found = re.search(r"Epoch\[(\d+)\] Complete\. Time taken: (\d\d):(\d\d):(\d\d(?:\.\d+)?)", line)
            if found:
                h, m, s = (float(v) for v in found.groups()[1:])
                runs[current]["epoch_s"].append(3600 * h + 60 * m + s)
                if runs[current]["first_epoch_at"] is None:
                    runs[current]["first_epoch_at"] = stamp
        elif current and re.match(rf"\d\d:\d\d:\d\d \[{re.escape(current)}/train\] done in", line):
            runs[current]["train_s"] = float(line.split("done in", 1)[1].split()[0])
            current = None

    def seconds(a: str, b: str) -> float:
        t = [datetime.datetime.strptime(x, "%H:%M:%S") for x in (a, b)]
        return (t[1] - t[0]).total_seconds() % 86400

    summary = {}
    for run, r in runs.items():
        first_epoch = r["epoch_s"][0] if r["epoch_s"] else 0
        summary[run] = {"median_epoch_s": statistics.median(r["epoch_s"]) if r["epoch_s"] else None,
                        "epochs": len(r["epoch_s"]), "train_s": r.get("train_s"),
                        "setup_s": seconds(r["start"], r["first_epoch_at"]) - first_epoch if r["first_epoch_at"] else None}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid_out", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--real", required=True, help="spleen-kd evaluate --real --grid OUT --json FILE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out, here = Path(args.grid_out), Path(__file__).parent
    real = json.loads(Path(args.real).read_text())
    cost = timings(Path(args.log))
    per_volume_dir = here / "teacher_3d_per_volume"
    per_volume_dir.mkdir(exist_ok=True)

    arms, averaged = {}, {}
    for name, run in TEACHERS.items():
        dice = dice_of(out, run)
        shutil.copy(out / "eval" / run / "test" / "metrics.csv", per_volume_dir / f"{run}.csv")
        subjects = real[run]["subjects"]
        arms[name] = {"dice_mean": round(statistics.mean(dice.values()), 4), "runs": 1,
                      "real_ct": {s: r["dice"] for s, r in subjects.items()}, "real_ct_mean": real[run]["mean_dice"],
                      "train_s": cost.get(run, {}).get("train_s")}
    for name, config in ARMS.items():
        seeds = {seed: dice_of(out, f"{config}-s{seed}") for seed in args.seeds}
        for seed in args.seeds:
            shutil.copy(out / "eval" / f"{config}-s{seed}" / "test" / "metrics.csv", per_volume_dir / f"{config}-s{seed}.csv")
        mean, std, _ = mean_std([statistics.mean(d.values()) for d in seeds.values()])
        cases = sorted(seeds[args.seeds[0]])
        averaged[name] = {c: statistics.mean(seeds[s][c] for s in args.seeds) for c in cases}
        real_runs = [real[f"{config}-s{seed}"] for seed in args.seeds]
        arms[name] = {"dice_mean": round(mean, 4), "dice_std": round(std, 4), "runs": len(args.seeds),
                      "real_ct_mean": round(statistics.mean(r["mean_dice"] for r in real_runs), 4),
                      "real_ct": {s: round(statistics.mean(r["subjects"][s]["dice"] for r in real_runs), 4)
                                  for s in real_runs[0]["subjects"]},
                      "real_ct_per_seed": {str(seed): r["mean_dice"] for seed, r in zip(args.seeds, real_runs)},
                      "median_epoch_s": statistics.median(cost[f"{config}-s{s}"]["median_epoch_s"] for s in args.seeds),
                      "setup_s": statistics.median(cost[f"{config}-s{s}"]["setup_s"] for s in args.seeds),
                      "train_s": [cost[f"{config}-s{s}"].get("train_s") for s in args.seeds]}
    tests = [paired_t(averaged[a], averaged[b]) for a, b in COMPARISONS]
    adjusted = holm([t.p for t in tests])
    comparisons = {f"{a} vs {b}": {"gain": round(statistics.mean(averaged[a][c] - averaged[b][c] for c in averaged[a]), 4),
                                   "p": round(t.p, 4), "p_holm": round(h, 4), "volumes": t.n}
                   for (a, b), t, h in zip(COMPARISONS, tests, adjusted)}
    result = {"command": __doc__.split("\n\n")[1].strip().splitlines(), "grid": "configs/experiments/teacher_3d.json",
              "hardware": "2-core Intel Xeon development machine, 24 GiB, no GPU; torch 2.13 CPU, MONAI 1.6.1",
              "seeds": args.seeds, "test_volumes": len(next(iter(averaged.values()))), "arms": arms,
              "comparisons": comparisons, "cost_per_run": cost}
    (here / "teacher_3d.json").write_text(json.dumps(result, indent=2) + "\n")

    rows = ["| model | test Dice (synthetic, 12 volumes) | real CT: example_ct_sm | real CT: DICOM series | real CT mean | s / epoch | setup s |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, arm in arms.items():
        dice = f"{arm['dice_mean']:.3f}" + (f" ± {arm['dice_std']:.3f}" if "dice_std" in arm else " (one run)")
        subjects = list(arm["real_ct"].values())
        epoch, setup = arm.get("median_epoch_s"), arm.get("setup_s")
        rows.append(f"| {name} | {dice} | {subjects[0]:.3f} | {subjects[1]:.3f} | {arm['real_ct_mean']:.3f} | "
                    f"{f'{epoch:.2f}' if epoch else '—'} | {f'{setup:.1f}' if setup else '—'} |")
    rows += ["", "| comparison | gain (Dice) | p (paired t, 12 volumes) | p (Holm, 3 tests) |", "| --- | --- | --- | --- |"]
    rows += [f"| {k} | {v['gain']:+.4f} | {v['p']:.4f} | {v['p_holm']:.4f} |" for k, v in comparisons.items()]
    (here / "teacher_3d.md").write_text("# 3D teacher vs 2D teacher (`configs/experiments/teacher_3d.json`)\n\n"
                                        + "\n".join(rows) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(ARMS)
    cases = sorted(averaged[names[0]])
    for case in cases:
        ax.plot(range(len(names)), [averaged[n][case] for n in names], color="0.7", marker="o", lw=1)
    ax.plot(range(len(names)), [statistics.mean(averaged[n].values()) for n in names], color="C3", marker="s", lw=2,
            label="mean")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test Dice (seed-averaged, per volume)")
    ax.set_title("S1 distilled from a 2D (T1) or 3D (U3) teacher")
    ax.legend()
    fig.tight_layout()
    fig.savefig(here / "teacher_3d.png", dpi=120)
    print((here / "teacher_3d.md").read_text())


if __name__ == "__main__":
    main()
