"""Statistics for comparing runs, and the result tables that ``spleen-kd grid`` and
``spleen-kd compare`` write.

Observations are per-volume 3D metrics (``metrics.csv`` of an evaluation) of runs that differ in
their seed. Two paired comparisons of a configuration against its baseline student:

* per volume: each test volume's metric averaged over the seeds both have, then a paired t-test and
  a Wilcoxon signed-rank test over volumes (the same test volumes for every run of a grid);
* across seeds: the per-seed means over volumes, paired by seed, and a paired t-test.

The one-way ANOVA over variants (what the thesis reported) treats per-seed means as independent
observations. Degenerate inputs (fewer than two pairs, all differences zero, one value per group)
give a stated result — ``p`` of 1 or nan with a ``note`` — never an exception, so a report over one
seed or a tiny test split is still written.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps

from bundle.report import markdown_table

NAN = float("nan")


@dataclass(frozen=True)
class StatResult:
    """Outcome of one test: statistic, two-sided p, sample size, degrees of freedom and any caveat."""

    test: str
    statistic: float
    p: float
    n: int
    df: tuple[int, ...] = ()
    note: str = ""


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof 1; nan for fewer than two values) and count, ignoring nan values."""
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return NAN, NAN, 0
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else NAN, int(array.size)


def align(a: Mapping, b: Mapping) -> tuple[list, np.ndarray, np.ndarray]:
    """Keys present (and not nan) in both mappings, sorted, with their values as two arrays."""
    keys = sorted(k for k in a.keys() & b.keys() if not (math.isnan(a[k]) or math.isnan(b[k])))
    return keys, np.array([a[k] for k in keys], dtype=float), np.array([b[k] for k in keys], dtype=float)


def _pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, Mapping):
        _, a, b = align(a, b)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def _constant(d: np.ndarray) -> bool:
    return float(np.std(d)) <= 1e-12 * max(1.0, float(np.abs(d).max()))


def paired_t(a, b, test: str = "paired t") -> StatResult:
    """Paired t-test of ``a - b`` (sequences of equal length, or mappings paired by key)."""
    a, b = _pairs(a, b)
    d, n = a - b, int(a.size)
    if n < 2:
        return StatResult(test, NAN, NAN, n, note=f"{n} pair(s): no test")
    if not d.any():
        return StatResult(test, 0.0, 1.0, n, (n - 1,), "all differences are zero")
    if _constant(d):
        return StatResult(test, NAN, NAN, n, (n - 1,), "the differences are all equal: t undefined (zero variance)")
    result = sps.ttest_rel(a, b)
    return StatResult(test, float(result.statistic), float(result.pvalue), n, (n - 1,))


def wilcoxon(a, b, test: str = "Wilcoxon") -> StatResult:
    """Wilcoxon signed-rank test of ``a - b``; zero differences are dropped (Wilcoxon's method)."""
    a, b = _pairs(a, b)
    d, n = a - b, int(a.size)
    if n < 1:
        return StatResult(test, NAN, NAN, n, note="no pairs: no test")
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return StatResult(test, 0.0, 1.0, n, note="all differences are zero")
    result = sps.wilcoxon(a, b)
    floor = 2.0 / 2**nonzero
    note = f"{nonzero} non-zero difference(s): p cannot fall below {floor:.4g}" if floor > 0.05 else ""
    return StatResult(test, float(result.statistic), float(result.pvalue), n, note=note)


def anova(groups: Mapping[str, Sequence[float]]) -> StatResult:
    """One-way ANOVA across named groups of independent observations (nan ignored, empty groups left out)."""
    samples = {name: np.asarray(v, dtype=float) for name, v in groups.items()}
    samples = {name: v[~np.isnan(v)] for name, v in samples.items()}
    samples = {name: v for name, v in samples.items() if v.size}
    k, n = len(samples), sum(v.size for v in samples.values())
    if k < 2:
        return StatResult("one-way ANOVA", NAN, NAN, n, note=f"{k} group(s) with data: no test")
    df = (k - 1, n - k)
    if n - k < 1:
        return StatResult("one-way ANOVA", NAN, NAN, n, df, "one observation per group: no within-group variance "
                          "to test against (run more seeds)")
    values = list(samples.values())
    within = sum(float(((v - v.mean()) ** 2).sum()) for v in values)
    if within == 0:
        if all(v.mean() == values[0].mean() for v in values):
            return StatResult("one-way ANOVA", NAN, 1.0, n, df, "all observations are equal")
        return StatResult("one-way ANOVA", math.inf, 0.0, n, df, "no within-group variance: F infinite")
    result = sps.f_oneway(*values)
    return StatResult("one-way ANOVA", float(result.statistic), float(result.pvalue), n, df)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order; nan stays nan and does not count as a test)."""
    p = np.asarray(pvalues, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(p.shape, NAN)
    running = 0.0
    for rank, index in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (tested.size - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def paired_comparisons(per_volume: Mapping[str, Mapping[str, float]], pairs: Sequence[tuple[str, str]]) -> dict:
    """``"a vs b"`` -> the mean gain of arm ``a`` over ``b`` on the volumes both have, their number, the paired
    t-test and Wilcoxon p over those volumes and the t-test's p Holm-adjusted over all ``pairs`` (one family)."""
    comparisons = {}
    for a, b in pairs:
        _, x, y = align(per_volume[a], per_volume[b])
        comparisons[f"{a} vs {b}"] = {"gain": round(float(np.mean(x - y)), 4), "volumes": int(x.size),
                                      "p_t": paired_t(x, y).p, "p_wilcoxon": wilcoxon(x, y).p}
    for result, adjusted in zip(comparisons.values(), holm([c["p_t"] for c in comparisons.values()])):
        result["p_holm"] = adjusted
    return comparisons


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


@dataclass
class RunRecord:
    """One evaluated run: its configuration label (the run without its seed), seed, matching baseline
    label, parameter count, and per-volume metrics (``volumes``: case -> metric -> value) or, when no
    per-volume rows exist, the means over volumes (``means``: metric -> value)."""

    run: str
    config: str
    seed: int
    baseline: str | None = None
    params: int | None = None
    volumes: dict[str, dict[str, float]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        if self.volumes:
            return mean_std([row.get(metric, NAN) for row in self.volumes.values()])[0]
        return self.means.get(metric, NAN)


def read_volume_metrics(path: str | Path) -> dict[str, dict[str, float]]:
    """``metrics.csv`` of an evaluation as case -> metric -> value (empty cells become nan)."""
    with open(path, newline="") as f:
        return {row.pop("case"): {k: float(v) if v not in ("", None) else NAN for k, v in row.items()}
                for row in csv.DictReader(f)}


def group_by_config(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs per configuration in first-seen order, each list sorted by seed."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.config, []).append(record)
    return {config: sorted(runs, key=lambda r: r.seed) for config, runs in groups.items()}


def _per_volume(runs: Sequence[RunRecord], seeds: set, metric: str) -> dict[str, float]:
    """Each case's metric averaged over the given seeds; cases missing in a seed are left out."""
    chosen = [r for r in runs if r.seed in seeds]
    cases = set.intersection(*(set(r.volumes) for r in chosen)) if chosen else set()
    return {case: mean_std([r.volumes[case].get(metric, NAN) for r in chosen])[0] for case in cases}


def compare(runs: Sequence[RunRecord], baseline: Sequence[RunRecord], metric: str = "dice") -> dict:
    """A configuration against its baseline on the seeds both have: difference of means, per-volume
    paired t and Wilcoxon tests on seed-averaged volumes, and the paired t-test over per-seed means."""
    seeds = {r.seed for r in runs} & {r.seed for r in baseline}
    ours = {r.seed: r.mean(metric) for r in runs if r.seed in seeds}
    theirs = {r.seed: r.mean(metric) for r in baseline if r.seed in seeds}
    volumes_ours, volumes_theirs = _per_volume(runs, seeds, metric), _per_volume(baseline, seeds, metric)
    return {"seeds": len(seeds),
            "delta": mean_std(list(ours.values()))[0] - mean_std(list(theirs.values()))[0] if seeds else NAN,
            "volume_t": paired_t(volumes_ours, volumes_theirs, "paired t over volumes"),
            "volume_wilcoxon": wilcoxon(volumes_ours, volumes_theirs, "Wilcoxon over volumes"),
            "seed_t": paired_t(ours, theirs, "paired t over seeds")}


METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 (mm)", "surface_dice": "Surface Dice",
                 "precision": "precision", "recall": "recall"}


def results_table(records: Sequence[RunRecord], metrics: Sequence[str] = ("dice", "iou", "hd95_mm")) -> str:
    """Markdown: per configuration, mean ± std over seeds of each metric's per-seed mean, the Dice gain
    over the matching baseline, the per-volume and across-seed paired tests, and Holm-adjusted
    per-volume t p-values over all comparisons in the table; caveats of degenerate tests follow it."""
    groups = group_by_config(records)
    rows, notes, tested = [], [], []
    for config, runs in groups.items():
        row = [config, len(runs), runs[0].params if runs[0].params is not None else "n/a"]
        row += [format_mean_std(*mean_std([r.mean(m) for r in runs])[:2], digits=2 if m == "hd95_mm" else 4)
                for m in metrics]
        baseline = runs[0].baseline
        if baseline and baseline in groups:
            result = compare(runs, groups[baseline])
            row += [baseline, f"{result['delta']:+.4f}" if not math.isnan(result["delta"]) else "n/a",
                    format_p(result["volume_t"].p), format_p(result["volume_wilcoxon"].p),
                    format_p(result["seed_t"].p)]
            tested.append((len(rows), result["volume_t"].p))
            notes += [f"{config}: {t.test}: {t.note}" for t in
                      (result["volume_t"], result["volume_wilcoxon"], result["seed_t"]) if t.note]
        else:
            row += [baseline + " (missing)" if baseline else "—", "", "", "", ""]
        rows.append(row)
    adjusted = dict(zip((index for index, _ in tested), holm([p for _, p in tested])))
    rows = [row + [format_p(adjusted[i]) if i in adjusted else ""] for i, row in enumerate(rows)]
    header = ["configuration", "seeds", "params"] + [METRIC_TITLES.get(m, m) for m in metrics] + [
        "baseline", "ΔDice", "p volumes (t)", "p volumes (Wilcoxon)", "p seeds (t)", "p volumes (t, Holm)"]
    text = markdown_table(header, rows)
    if notes:
        text += "\n\nNotes:\n\n" + "\n".join(f"- {note}" for note in notes)
    return text


def anova_table(records: Sequence[RunRecord], families: Mapping[str, Sequence[str]], metric: str = "dice") -> str:
    """Markdown: one-way ANOVA of per-seed mean ``metric`` across the configurations of each family
    (configurations without runs are left out)."""
    if not families:
        return "No family of two or more variants to compare."
    groups = group_by_config(records)
    rows = []
    for family, configs in families.items():
        present = {c: [r.mean(metric) for r in groups[c]] for c in configs if c in groups}
        result = anova(present)
        rows.append([family, ", ".join(f"{c} ({len(v)})" for c, v in present.items()) or "none",
                     "n/a" if math.isnan(result.statistic) else f"{result.statistic:.3f}",
                     ", ".join(map(str, result.df)) or "n/a", format_p(result.p), result.note])
    return markdown_table(["family", "groups (seeds)", "F", "df", "p", "note"], rows)
