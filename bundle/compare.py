"""Compare any set of runs from an MLflow store: mean ± std over seeds, gain over the matching baseline
student, and paired tests (the table of ``spleen-kd grid``'s results.md).

    spleen-kd compare --tracking_uri sqlite:///runs/thesis/eval/mlruns.db
    spleen-kd compare --tracking_uri sqlite:///runs/thesis/eval/mlruns.db \\
        --runs 'S1-f50-base-*' 'T1-S1-f50-nce_*' --anova --out table.md

Runs whose parameters differ only in ``seed`` form one configuration, labelled by the run name
without its seed suffix. A distilled run's baseline is the configuration trained without a teacher,
with only the ``seg`` loss, on the same student network, data split and fraction, slice size,
epochs and learning rate. Per-volume metrics come from ``EVAL_ROOT/<run name>/test/metrics.csv`` (where
the bundle's evaluation writes them); runs without that file fall back on the ``test_*`` means that
``spleen-kd grid`` logs to MLflow, and per-volume tests are then not available.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
from pathlib import Path


BASELINE_KEYS = ("network", "train_split", "student_fraction", "slice_size", "epochs", "learning_rate", "epoch_length")


def _label(name: str, seed: int) -> str:
    return re.sub(rf"[-_.]?s(eed)?[-_]?{seed}$", "", name) or name


def _is_student_setting(key: str) -> bool:
    return key in BASELINE_KEYS or key.startswith("network.")


def load_runs(tracking_uri: str, experiment: str = "spleen-kd", patterns: list[str] | None = None) -> list[dict]:
    """The experiment's runs as ``{"name", "params", "metrics"}`` in start order, the latest run of each name
    only, filtered by name patterns (shell-style wildcards) when given.

    A client bound to ``tracking_uri`` is used instead of ``mlflow.set_tracking_uri``, which would also
    redirect every later MLflow handler of this process (it sets ``MLFLOW_TRACKING_URI``)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    latest, seen = [], set()
    for run in runs:
        name = run.info.run_name
        if name in seen or (patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns)):
            continue
        seen.add(name)
        latest.append({"name": name, "params": dict(run.data.params), "metrics": dict(run.data.metrics)})
    return latest[::-1]


def to_records(runs: list[dict], eval_root: Path | None):
    """Group by every parameter but the seed, find each distilled configuration's baseline, attach metrics."""
    from .stats import RunRecord, read_volume_metrics

    configs: dict[tuple, str] = {}
    labels: set[str] = set()
    records = []
    for run in runs:
        params = run["params"]
        seed = int(params.get("seed", 0))
        key = tuple(sorted((k, v) for k, v in params.items() if k != "seed"))
        if key not in configs:
            label = _label(run["name"], seed)
            while label in labels:
                label += "'"
            configs[key] = label
            labels.add(label)
        csv = eval_root / run["name"] / "test" / "metrics.csv" if eval_root else None
        volumes = read_volume_metrics(csv) if csv and csv.is_file() else {}
        means = {k[len("test_"):]: v for k, v in run["metrics"].items() if k.startswith("test_")}
        params_count = params.get("network.params")
        records.append(RunRecord(run["name"], configs[key], seed, None,
                                 int(params_count) if params_count is not None else None, volumes, means))
    baselines = {}
    for key, label in configs.items():
        params = dict(key)
        if params.get("loss_terms") == "seg" and not any(k.startswith("teacher") for k in params):
            baselines.setdefault(tuple((k, v) for k, v in key if _is_student_setting(k)), label)
    for record, run in zip(records, runs):
        if any(k.startswith("teacher") for k in run["params"]):
            student = tuple(sorted((k, v) for k, v in run["params"].items() if _is_student_setting(k)))
            record.baseline = baselines.get(student)
    return records


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="spleen-kd compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking_uri", required=True, help="e.g. sqlite:///runs/thesis/eval/mlruns.db")
    parser.add_argument("--experiment", default="spleen-kd")
    parser.add_argument("--runs", nargs="+", help="run names or shell-style patterns (default: all runs)")
    parser.add_argument("--eval_root", help="folder holding <run name>/test/metrics.csv (default: the SQLite file's folder)")
    parser.add_argument("--anova", action="store_true", help="add a one-way ANOVA over the distilled and baseline "
                        "configurations shown (per-seed mean Dice)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)

    from .stats import anova_table, results_table

    eval_root = Path(args.eval_root) if args.eval_root else None
    if eval_root is None and args.tracking_uri.startswith("sqlite:///"):
        eval_root = Path(args.tracking_uri[len("sqlite:///"):]).parent
    runs = load_runs(args.tracking_uri, args.experiment, args.runs)
    if not runs:
        raise SystemExit(f"no runs in experiment '{args.experiment}' at {args.tracking_uri}"
                         + (f" matching {args.runs}" if args.runs else ""))
    records = to_records(runs, eval_root)
    text = f"{len(runs)} runs from {args.tracking_uri} (experiment {args.experiment}).\n\n{results_table(records)}\n"
    if args.anova:
        compared = list(dict.fromkeys([r.baseline for r in records if r.baseline]
                                      + [r.config for r in records if r.baseline]))
        text += f"\n{anova_table(records, {'shown configurations': compared})}\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
