"""Distillation against the simple alternatives (configs/experiments/alternatives.json) summarised:
alternatives.json, .md, .png and the per-volume CSVs in alternatives_per_volume/.

    spleen-kd synthesize --out data --cases 40 --seed 0
    spleen-kd grid --out OUT --grid alternatives --dataset_dir data
    spleen-kd evaluate --real --grid OUT --json OUT/real_ct.json
    python docs/results/alternatives.py --grid_out OUT --real OUT/real_ct.json

Per arm: per-seed mean Dice over the 12 test volumes, mean ± std over the seeds that finished; the
comparisons: paired t-test over the test volumes of seed-averaged Dice (the seeds both arms have),
Holm over the whole family.
"""
import argparse
import json
import shutil
import statistics
from pathlib import Path

from bundle.stats import holm, mean_std, paired_t, read_volume_metrics

ARMS = {"base": "S1-f50-base", "oracle": "S1-f100-base", "dist+unl": "T1-S1-f50-dist+unl", "pseudo": "T1-S1-f50-pseudo",
        "pseudo-soft": "T1-S1-f50-pseudo-soft", "dist+unl+pseudo": "T1-S1-f50-dist+unl+pseudo",
        "thesis": "T1-S1-f50-thesis", "thesis+unl": "T1-S1-f50-thesis+unl"}
COMPARISONS = [("dist+unl", "pseudo"), ("dist+unl", "pseudo-soft"), ("dist+unl+pseudo", "dist+unl"),
               *[(arm, "oracle") for arm in ARMS if arm not in ("oracle",)],
               *[(arm, "base") for arm in ARMS if arm not in ("base", "oracle")]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid_out", required=True)
    parser.add_argument("--real", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    out, here = Path(args.grid_out), Path(__file__).parent
    real = json.loads(Path(args.real).read_text())
    per_volume_dir = here / "alternatives_per_volume"
    per_volume_dir.mkdir(exist_ok=True)

    def dice(run: str) -> dict[str, float] | None:
        path = out / "eval" / run / "test" / "metrics.csv"
        if not path.is_file():
            return None
        shutil.copy(path, per_volume_dir / f"{run}.csv")
        return {case: row["dice"] for case, row in read_volume_metrics(path).items()}

    teacher = dice("teacher-T1")
    arms = {"teacher": {"dice_mean": round(statistics.mean(teacher.values()), 4), "dice_std": None, "seeds": [],
                        "real_ct_mean": real["teacher-T1"]["mean_dice"]}}
    by_seed = {}
    for name, config in ARMS.items():
        by_seed[name] = {s: d for s in args.seeds if (d := dice(f"{config}-s{s}")) is not None}
        seeds = sorted(by_seed[name])
        mean, std, _ = mean_std([statistics.mean(by_seed[name][s].values()) for s in seeds])
        reals = [real[f"{config}-s{s}"]["mean_dice"] for s in seeds if f"{config}-s{s}" in real]
        arms[name] = {"dice_mean": round(mean, 4), "dice_std": round(std, 4), "seeds": seeds,
                      "real_ct_mean": round(statistics.mean(reals), 4) if reals else None}

    def averaged(name: str, seeds: list[int]) -> dict[str, float]:
        cases = by_seed[name][seeds[0]]
        return {c: statistics.mean(by_seed[name][s][c] for s in seeds) for c in cases}

    tests, gains = [], []
    for a, b in COMPARISONS:
        seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
        x, y = averaged(a, seeds), averaged(b, seeds)
        tests.append(paired_t(x, y))
        gains.append((statistics.mean(x[c] - y[c] for c in x), seeds))
    adjusted = holm([t.p for t in tests])
    comparisons = {f"{a} vs {b}": {"gain": round(g, 4), "p": round(t.p, 4), "p_holm": round(h, 4), "seeds": seeds}
                   for (a, b), t, h, (g, seeds) in zip(COMPARISONS, tests, adjusted, gains)}
    result = {"command": __doc__.split("\n\n")[1].strip().splitlines(), "grid": "configs/experiments/alternatives.json",
              "hardware": "2-core AMD EPYC development machine, 24 GiB, no GPU; torch 2.13 CPU, MONAI 1.6.1",
              "seeds": args.seeds, "test_volumes": len(teacher), "arms": arms, "comparisons": comparisons}
    (here / "alternatives.json").write_text(json.dumps(result, indent=2) + "\n")

    rows = ["| arm | seeds | test Dice (synthetic, 12 volumes) | real CT mean (2 fixtures) |", "| --- | --- | --- | --- |"]
    for name, arm in arms.items():
        spread = f" ± {arm['dice_std']:.3f}" if arm.get("dice_std") is not None else " (one run)"
        real_mean = f"{arm['real_ct_mean']:.3f}" if arm["real_ct_mean"] is not None else "—"
        rows.append(f"| {name} | {len(arm['seeds']) or 1} | {arm['dice_mean']:.3f}{spread} | {real_mean} |")
    rows += ["", "| comparison | seeds | gain (Dice) | p (paired t) | p (Holm) |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {k} | {len(v['seeds'])} | {v['gain']:+.4f} | {v['p']:.4f} | {v['p_holm']:.4f} |" for k, v in comparisons.items()]
    (here / "alternatives.md").write_text("# Distillation against pseudo-labels, the oracle and the thesis's recipe "
                                          "(`configs/experiments/alternatives.json`)\n\n" + "\n".join(rows) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ARMS if by_seed[n]]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, name in enumerate(names):
        means = [statistics.mean(by_seed[name][s].values()) for s in sorted(by_seed[name])]
        ax.scatter([i] * len(means), means, color="0.5", s=14)
        ax.scatter([i], [statistics.mean(means)], color="C3", marker="s", s=40)
    ax.axhline(arms["teacher"]["dice_mean"], color="C0", ls="--", lw=1, label="teacher T1")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("test Dice (per-seed mean over 12 volumes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(here / "alternatives.png", dpi=120)
    print((here / "alternatives.md").read_text())


if __name__ == "__main__":
    main()
