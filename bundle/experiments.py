"""The thesis's experiment grid over seeds: teachers, baseline students and distilled students, each
trained as one MLflow run, evaluated per volume on the test split, and summarised with paired tests.

    spleen-kd grid --out runs/thesis --grid thesis --seeds 0 1 2 --dataset_dir data/Task09_Spleen
    spleen-kd grid --out runs/smoke --grid smoke              # CPU: phantoms, configs/demo.json
    spleen-kd grid --out runs/smoke --grid smoke --dry_run    # the planned runs and overrides

A grid is a JSON file in ``configs/experiments/`` (``--grid NAME``) or anywhere (``--grid PATH``);
see ``configs/experiments/thesis.json`` for the schema. Every run uses the real bundle configs in
this process, logs to ``OUT/eval/mlruns.db`` (experiment ``spleen-kd``) under a run name that
encodes it (``T1-S1-f50-nce_bed+pmd-s0``, ``S1-f50-base-s0``, ``teacher-T1``), and leaves a
marker in ``OUT/stages/<run>/``; a rerun skips what is finished and resumes an interrupted
training from its saved state. Per-volume metrics go to ``OUT/eval/<run>/metrics.csv``, the
summary to ``OUT/results.md``.

The data split is fixed (``--split_seed``) and shared by all runs, so every run sees the same test
volumes and per-volume results pair across seeds and variants; ``--seeds`` vary initialisation and
slice sampling. Each teacher is trained once, on that split's teacher volumes, or given trained
(``{"checkpoint": "models/teacher/model.pt"}``, at the slice size of the grid's configs): the grid
measures the variance of distillation given a teacher, at a fraction of the cost of a teacher per seed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write_text
from .workflows import Stages, bundle_root, bundle_run, config_dir, config_files, located, parsed

GRIDS = config_dir() / "experiments"
BASELINE = "base"
GRID_KEYS = ("configs", "seeds", "teachers", "students", "variants", "fractions", "anova")


@dataclass
class PlannedRun:
    """One training run of the grid and what its evaluation needs."""

    name: str
    stage: str
    config: str
    seed: int
    overrides: dict
    baseline: str | None = None
    network: dict | None = None
    teacher: str | None = None
    configs: tuple[str, ...] = ()  # configs merged after the grid's for this run (a 3D teacher's teacher_bundle.json)


def load_grid(grid: str) -> dict:
    """A grid by name (``configs/experiments/<name>.json``) or path, checked against kd.json's terms."""
    path = Path(grid) if grid.endswith(".json") else GRIDS / f"{grid}.json"
    if not path.is_file():
        names = sorted(p.stem for p in GRIDS.glob("*.json"))
        raise SystemExit(f"grid '{grid}' not found: give one of {names} or the path of a grid JSON file.")
    spec = json.loads(path.read_text())
    missing = [key for key in GRID_KEYS if key not in spec]
    if missing:
        raise SystemExit(f"grid '{path}' lacks {missing}; see configs/experiments/thesis.json for the schema.")
    terms = set(json.loads(Path(located("kd")).read_text())["loss_terms"])
    spec["variants"] = {name: variant_spec(chosen) for name, chosen in spec["variants"].items()}
    spec.setdefault("assistants", {})
    for name, assistant in spec["assistants"].items():
        if assistant.get("teacher") not in spec["teachers"] or "network" not in assistant:
            raise SystemExit(f"grid '{path}': assistant '{name}' needs a \"network\" and a \"teacher\" among "
                             f"{sorted(spec['teachers'])}.")
        assistant.update(variant_spec(assistant.get("terms", ["pmd"])), teacher=assistant["teacher"])
    for variant, chosen in [*spec["variants"].items(), *spec["assistants"].items()]:
        unknown = set(chosen["terms"]) - terms
        if unknown or variant == BASELINE:
            raise SystemExit(f"grid '{path}': variant '{variant}' is reserved or names unknown terms "
                             f"{sorted(unknown)}; terms are {sorted(terms)}.")
        if chosen.get("teacher") and chosen["teacher"] not in {*spec["teachers"], *spec["assistants"]}:
            raise SystemExit(f"grid '{path}': variant '{variant}' distils from '{chosen['teacher']}', which is "
                             "neither a teacher nor an assistant of the grid.")
    used = {v for vs in spec["fractions"].values() for v in vs} | {v for vs in spec["anova"].values() for v in vs}
    undefined = used - set(spec["variants"]) - {BASELINE}
    if undefined:
        raise SystemExit(f"grid '{path}' uses variants it does not define: {sorted(undefined)}.")
    spec["name"] = path.stem
    return spec


def variant_spec(chosen) -> dict:
    """A variant as ``{"terms": [...], "overrides": {...}, "teacher": name or None}``; a plain list names
    the distillation terms added to ``seg``. No terms: the student trained alone with the variant's overrides
    (e.g. augmentation), compared with the baseline like any variant."""
    if isinstance(chosen, list):
        chosen = {"terms": chosen}
    if not isinstance(chosen, dict) or not isinstance(chosen.get("terms"), list):
        raise SystemExit(f"a variant is a list of loss terms or a dict with \"terms\", got {chosen!r}.")
    return {"terms": chosen["terms"], "overrides": chosen.get("overrides", {}), "teacher": chosen.get("teacher")}


def is_volume_teacher(network) -> bool:
    """A grid teacher given as ``{"workflow": "teacher_3d", "overrides": {...}}``: a 3D MONAI network trained by
    that workflow and distilled through ``configs/teacher_bundle.json``, instead of a slice network definition."""
    return isinstance(network, dict) and "workflow" in network


def is_trained_teacher(network) -> bool:
    """A grid teacher given as ``{"checkpoint": path}``: weights trained already (e.g. the shipped
    ``models/teacher/model.pt``; a relative path is the bundle's), with the network of the ``model.json``
    beside them. No run trains it; its students distil from it as they are."""
    return isinstance(network, dict) and "checkpoint" in network


def trained_teacher(teacher: str, network: dict) -> tuple[Path, dict]:
    """The checkpoint path and network definition of a ``{"checkpoint": path}`` teacher."""
    from .serving import model_info

    ckpt = Path(network["checkpoint"])
    ckpt = ckpt if ckpt.is_absolute() else bundle_root() / ckpt
    if not ckpt.is_file() or not model_info.info_path(ckpt).is_file():
        raise SystemExit(f"grid teacher '{teacher}': checkpoint '{ckpt}' or its model.json is missing; give a "
                         "checkpoint published with its description (e.g. models/teacher/model.pt).")
    info = model_info.read(ckpt, check=False)
    if info.get("checkpoint_sha256") != model_info.sha256(ckpt):
        raise SystemExit(f"grid teacher '{teacher}': {model_info.info_path(ckpt)} describes other weights than "
                         f"'{ckpt}' (SHA-256 differs); publish the checkpoint again to describe it.")
    return ckpt, info["network_def"]


def fraction_tag(fraction: float) -> str:
    return f"f{round(fraction * 100)}"


def datalist_path(out: Path, fraction: float, split_seed: int) -> Path:
    return out / "datalists" / f"split{split_seed}-{fraction_tag(fraction)}.json"


def plan(grid: dict, out: Path, seeds: list[int], dataset_dir: str, split_seed: int = 0) -> list[PlannedRun]:
    """Teachers first (once each), then per seed the baseline students and the distilled students."""
    out = Path(out)
    fractions = {float(f): variants for f, variants in grid["fractions"].items()}
    shared = {"bundle_root": str(bundle_root()), "output_root": str(out), "dataset_dir": str(dataset_dir), "resume": True,
              "publish": False, **grid.get("overrides", {})}

    def planned(name, stage, config, seed, fraction, network, baseline=None, teacher=None, configs=(), **extra) -> PlannedRun:
        overrides = {**shared, "datalist_file": str(datalist_path(out, fraction, split_seed)), "seed": seed,
                     "student_fraction": fraction, "run_name": name, **extra}
        return PlannedRun(name, stage, config, seed, overrides, baseline, network, teacher, tuple(configs))

    def defined(key: str, network: dict | None) -> dict:
        """A null network in the grid means the configs' own definition: no override."""
        return {} if network is None else {key: network}

    # per teacher: its network definition, the run that trains it (none for a trained one) and its checkpoint
    runs, volume_teachers, networks, teacher_runs, ckpts = [], {}, {}, {}, {}
    for teacher, network in grid["teachers"].items():
        if is_trained_teacher(network):
            ckpt, networks[teacher] = trained_teacher(teacher, network)
            ckpts[teacher] = str(ckpt)
            continue
        teacher_runs[teacher] = f"teacher-{teacher}"
        ckpts[teacher] = str(out / "models" / teacher_runs[teacher] / "model.pt")
        if is_volume_teacher(network):  # trained by its own workflow, written as a MONAI bundle folder
            volume_teachers[teacher] = str(out / "bundles" / f"teacher-{teacher}")
            networks[teacher] = None
            runs.append(planned(f"teacher-{teacher}", network["workflow"], f"teacher-{teacher}", split_seed,
                                min(fractions), None, **network.get("overrides", {})))
        else:
            networks[teacher] = network
            runs.append(planned(f"teacher-{teacher}", "teacher", f"teacher-{teacher}", split_seed, min(fractions),
                                network, **defined("teacher_def", network)))
    for name, assistant in grid.get("assistants", {}).items():
        # a smaller network distilled once from a teacher, then a teacher itself (teacher assistant)
        teacher = assistant["teacher"]
        runs.append(planned(f"assistant-{name}", "kd", f"assistant-{name}", split_seed, min(fractions),
                            assistant["network"], None, teacher_runs.get(teacher), student_def=assistant["network"],
                            **defined("teacher_def", networks[teacher]), teacher_ckpt=ckpts[teacher],
                            **assistant["overrides"], distill=assistant["terms"]))
        networks[name] = assistant["network"]
        teacher_runs[name] = f"assistant-{name}"
        ckpts[name] = str(out / "models" / teacher_runs[name] / "model.pt")
    for seed in seeds:
        for fraction, variants in fractions.items():
            tag = fraction_tag(fraction)
            for student, student_def in grid["students"].items():
                base = f"{student}-{tag}-{BASELINE}"
                runs.append(planned(f"{base}-s{seed}", "student", base, seed, fraction, student_def,
                                    **defined("student_def", student_def)))
                for variant in variants:
                    spec = grid["variants"][variant]
                    if not spec["terms"]:  # no distillation: the student alone with other settings, no teacher
                        config = f"{student}-{tag}-{variant}"
                        runs.append(planned(f"{config}-s{seed}", "student", config, seed, fraction, student_def, base,
                                            **defined("student_def", student_def), **spec["overrides"]))
                for teacher in grid["teachers"]:
                    for variant in variants:
                        spec = grid["variants"][variant]
                        if not spec["terms"]:
                            continue
                        source = spec["teacher"] or teacher
                        if spec["teacher"] and teacher != next(iter(grid["teachers"])):
                            continue  # a variant with its own teacher is planned once
                        config = f"{source}-{student}-{tag}-{variant}"
                        if source in volume_teachers:
                            teacher_from = {"configs": ("teacher_bundle",), "teacher_bundle": volume_teachers[source]}
                        else:
                            teacher_from = {**defined("teacher_def", networks[source]), "teacher_ckpt": ckpts[source]}
                        runs.append(planned(
                            f"{config}-s{seed}", "kd", config, seed, fraction, student_def, base, teacher_runs.get(source),
                            **defined("student_def", student_def), **teacher_from, **spec["overrides"],
                            distill=spec["terms"]))
    return runs


def select(runs: list[PlannedRun], patterns: list[str]) -> list[PlannedRun]:
    """The runs whose name matches a shell-style pattern, plus the teacher and the baseline (same seed) they need."""
    chosen = {run.name for run in runs if any(fnmatch.fnmatchcase(run.name, p) for p in patterns)}
    by_name = {run.name: run for run in runs}
    pending = list(chosen)
    while pending:  # transitively: a student needs its assistant, which needs its teacher
        run = by_name[pending.pop()]
        needed = ({run.teacher} if run.teacher else set()) | ({f"{run.baseline}-s{run.seed}"} if run.baseline else set())
        pending += sorted(needed - chosen)
        chosen |= needed
    return [run for run in runs if run.name in chosen]


def anova_families(grid: dict, runs: list[PlannedRun]) -> dict[str, list[str]]:
    """Each ANOVA family per teacher × student × fraction where it has at least two distilled variants."""
    configs = {run.config for run in runs}
    families = {}
    for teacher in grid["teachers"]:
        for student in grid["students"]:
            for fraction in sorted(float(f) for f in grid["fractions"]):
                tag = fraction_tag(fraction)
                for family, variants in grid["anova"].items():
                    members = [f"{student}-{tag}-{BASELINE}" if v == BASELINE else f"{teacher}-{student}-{tag}-{v}"
                               for v in variants]
                    members = [m for m in members if m in configs]
                    if sum(not m.endswith(f"-{BASELINE}") for m in members) >= 2:
                        families[f"{family} · {teacher}-{student}-{tag}"] = members
    return families


def eval_dir(out: Path, run: str) -> Path:
    """Where ``configs/evaluate.json`` writes a run's test-split metrics (``eval_dir``)."""
    return out / "eval" / run / "test"


def _marker(out: Path, run: str, step: str) -> Path:
    return Stages(out).marker(f"{run}/{step}")


def _step(out: Path, run: str, step: str, fn, log) -> bool:
    """Run ``fn`` unless its marker exists (:class:`bundle.workflows.Stages`); True if it ran."""
    stages = Stages(out, log)
    if stages.done(f"{run}/{step}"):
        return False
    stages.run(f"{run}/{step}", fn)
    return True


def _write_datalists(runs: list[PlannedRun], configs: list[str], dataset_dir: str, split_seed: int, log,
                     more_training: str | None = None) -> None:
    """One split per student fraction, in the datalist format the bundle uses as is (no ``params``), so runs
    with any ``seed`` share the split of ``split_seed``; validation, test and teacher volumes never change.
    ``more_training`` (a dataset folder) adds its volumes to the training lists only."""
    from .data.datalist import check_pairs, read_pairs, split_by_volume, with_training_volumes

    files = {run.overrides["datalist_file"]: run.overrides["student_fraction"] for run in runs}
    settings = parsed(config_files("kd", *configs), runs[0].overrides)
    pairs = None
    for path, fraction in files.items():
        path = Path(path)
        if path.is_file():
            existing = json.loads(path.read_text())
            if (existing.get("dataset_dir"), existing.get("split_seed"), existing.get("more_training")) != (
                    str(dataset_dir), split_seed, more_training):
                raise SystemExit(f"{path} holds the split of {existing.get('dataset_dir')} (split seed "
                                 f"{existing.get('split_seed')}, more training volumes from "
                                 f"{existing.get('more_training')}), not of {dataset_dir} (split seed {split_seed}, "
                                 f"more training volumes from {more_training}); use another --out for other data.")
            continue
        if pairs is None:
            label_value = settings.get_parsed_content("label_value")
            pairs = read_pairs(dataset_dir=dataset_dir)
            check_pairs(pairs, label_value)
            extra = read_pairs(dataset_dir=more_training) if more_training else []
            check_pairs(extra, label_value)
        split = split_by_volume(pairs, split_seed, settings.get_parsed_content("val_fraction"),
                                settings.get_parsed_content("test_fraction"), fraction)
        if extra:
            split = with_training_volumes(split, extra, split_seed, fraction)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"dataset_dir": str(dataset_dir), "split_seed": split_seed,
                                    **({"more_training": more_training} if more_training else {}),
                                    "student_fraction": fraction, **split}, indent=2))
        log(f"split {path.name}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))


def _log_test_metrics(out: Path, run: str, summary: dict, log) -> None:
    """Add the test means to the run's MLflow record, so the store alone can rank runs. The store is the one
    the training handler used: ``MLFLOW_TRACKING_URI`` if set (it takes precedence there too), else OUT's."""
    import mlflow

    experiment = json.loads(Path(located("mlflow")).read_text())["configs"]["experiment_name"]
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'eval' / 'mlruns.db').resolve()}"
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id], filter_string=f"attributes.run_name = '{run}'",
                                  order_by=["attributes.start_time DESC"], max_results=1) if found else []
        if not runs:
            log(f"[{run}] no MLflow run of that name: test metrics not logged there")
            return
        for metric, stats in summary["metrics"].items():
            if not math.isnan(stats["mean"]):
                client.log_metric(runs[0].info.run_id, f"test_{metric}", stats["mean"])
    except Exception as error:  # tracking is a convenience: the CSV and summary are already written
        log(f"[{run}] could not log test metrics to MLflow ({type(error).__name__}: {error})")


def _train(run: PlannedRun, files: list[str]) -> dict:
    bundle_run("training", files, tracking=located("mlflow"), **run.overrides)
    return {"config_files": files, "overrides": run.overrides}


def _evaluate(run: PlannedRun, out: Path, configs: list[str], log) -> dict:
    """Per-volume metrics of the run's best checkpoint on the test split, in ``OUT/eval/<run>/test/``."""
    bundle_run("evaluating", config_files(run.stage, *configs, *run.configs, evaluate=True), **run.overrides, split="test",
                outputs=["seg", "rec"] if run.stage == "teacher" else ["seg"])
    summary = json.loads((eval_dir(out, run.name) / "summary.json").read_text())
    _log_test_metrics(out, run.name, summary, log)
    return summary


def records(runs: list[PlannedRun], out: Path):
    """The evaluated runs as :class:`bundle.stats.RunRecord` (per-volume rows from their metrics.csv)."""
    from .stats import RunRecord, read_volume_metrics

    found = []
    for run in runs:
        marker = _marker(out, run.name, "evaluate")
        if marker.is_file():
            summary = json.loads(marker.read_text())
            found.append(RunRecord(run.name, run.config, run.seed, run.baseline, summary.get("params"),
                                   read_volume_metrics(eval_dir(out, run.name) / "metrics.csv")))
    return found


def write_results(grid: dict, runs: list[PlannedRun], out: Path, seeds: list[int], configs: list[str],
                  data_note: str, split_seed: int) -> Path:
    from .stats import anova_table, results_table

    found = records(runs, out)
    text = (f"# Experiment grid `{grid['name']}`\n\n{grid.get('description', '')}\n\n{data_note} Split seed "
            f"{split_seed} (the same validation/test/teacher volumes for every run); seeds {seeds}; override configs "
            f"{configs or 'none'}; grid overrides {grid.get('overrides') or 'none'}. {len(found)} of {len(runs)} "
            "planned runs evaluated.\n\n"
            "## Test split, per-volume 3D metrics\n\nEach cell: mean ± std over seeds of the per-seed mean over test "
            "volumes (no ± with one seed). ΔDice: mean Dice minus the baseline student's (same student and data "
            "fraction, trained alone for the same epochs) on the seeds both have. p volumes: paired tests over test "
            "volumes of seed-averaged Dice; p seeds: paired t-test over per-seed mean Dice; Holm adjusts the "
            f"per-volume t p-values over all comparisons in the table.\n\n{results_table(found)}\n\n"
            "## One-way ANOVA over variants\n\nObservations: per-seed mean Dice of each configuration (the thesis "
            "reported F = 5.48, p = 0.039 over its scale variants).\n\n"
            f"{anova_table(found, anova_families(grid, runs))}\n")
    path = out / "results.md"
    path.write_text(text)
    return path


def write_summary(runs: list[PlannedRun], out: Path, seeds: list[int], command: str, data_note: str) -> dict:
    """``OUT/summary.json`` (every configuration against its baseline: mean ± std over seeds, the gain in
    seed-averaged per-volume Dice, paired t-test over test volumes with Holm over all comparisons, and
    every per-volume value) and ``OUT/summary.png`` (per-volume Dice gains)."""
    from .stats import compare, group_by_config, holm, mean_std

    groups = group_by_config(records(runs, out))
    compared = {config: compare(group, groups[group[0].baseline]) for config, group in groups.items()
                if group[0].baseline and group[0].baseline in groups}
    adjusted = dict(zip(compared, holm([result["volume_t"].p for result in compared.values()])))

    def described(config: str) -> dict:
        group = groups[config]
        per_seed = [r.mean("dice") for r in group]
        cases = sorted(set.intersection(*(set(r.volumes) for r in group)))
        per_volume = {case: mean_std([r.volumes[case]["dice"] for r in group])[0] for case in cases}
        mean, std, _ = mean_std(per_seed)
        return {"config": config, "seeds": [r.seed for r in group], "dice_mean": mean, "dice_std": std,
                "dice_per_seed": per_seed, "dice_per_volume": per_volume,
                "params": group[0].params}

    seconds = sum(json.loads(m.read_text()).get("seconds", 0) for run in runs
                  for m in (_marker(out, run.name, "train"), _marker(out, run.name, "evaluate")) if m.is_file())
    baselines = sorted({groups[c][0].baseline for c in compared})
    summary = {"command": command, "data": data_note, "seeds": seeds,
               "test_volumes": len(next(iter(groups.values()))[0].volumes) if groups else 0,
               "compute_seconds": round(seconds, 1),
               "baseline": described(baselines[0]) if len(baselines) == 1 else {b: described(b) for b in baselines},
               "others": {c: described(c) for c in groups if c not in compared and c not in baselines},
               "variants": {}}
    for config, result in compared.items():
        ours, theirs = described(config), described(groups[config][0].baseline)
        common = [c for c in ours["dice_per_volume"] if c in theirs["dice_per_volume"]]
        gains = [ours["dice_per_volume"][c] - theirs["dice_per_volume"][c] for c in common]
        summary["variants"][config] = {
            **ours, "baseline": groups[config][0].baseline, "gain": mean_std(gains)[0],
            "p": result["volume_t"].p, "p_holm": adjusted[config], "p_wilcoxon": result["volume_wilcoxon"].p,
            "p_seeds": result["seed_t"].p}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    if compared:
        _plot_gains(summary, out / "summary.png")
    return summary


def _plot_gains(summary: dict, path: Path) -> None:
    """Per-volume Dice gain over the baseline (seed-averaged), one column per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4))
    for i, name in enumerate(names):
        variant = summary["variants"][name]
        base = summary["baseline"] if "dice_per_volume" in summary["baseline"] else summary["baseline"][variant["baseline"]]
        gains = [v - base["dice_per_volume"][c] for c, v in variant["dice_per_volume"].items()]
        ax.scatter([i] * len(gains), gains, s=14, alpha=0.6)
        ax.errorbar(i, sum(gains) / len(gains), fmt="k_", markersize=18)
        ax.text(i, max(gains) + 0.005, f"p={variant['p_holm']:.2g}", ha="center", fontsize=7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(names)), [n.split("-")[-1] for n in names], rotation=30, ha="right")
    ax.set_ylabel("Dice gain over the baseline student (per test volume)")
    ax.set_title(f"{len(summary['seeds'])} seeds, {summary['test_volumes']} test volumes; black: mean; p: Holm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="spleen-kd grid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (reruns skip its finished runs)")
    parser.add_argument("--grid", default="thesis", help="grid name in configs/experiments/ or a grid JSON path")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the grid's)")
    parser.add_argument("--config", nargs="+", action="extend",
                        help="override configs merged after each workflow's config (default: the grid's)")
    parser.add_argument("--dataset_dir", help="an MSD-style folder (dataset.json inside); default "
                        "data/Task09_Spleen if it is there, else phantoms made in OUT/phantoms")
    parser.add_argument("--cases", type=int, default=16, help="phantom volumes to make when there is no dataset")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of the data split shared by all runs")
    parser.add_argument("--more_training", metavar="DIR", help="an MSD-style folder whose volumes join the "
                        "training volumes of the split only (validation and test unchanged): a study of more data")
    parser.add_argument("--only", nargs="+", metavar="PATTERN",
                        help="run only these run names (shell-style, e.g. 'T1-S1-*'), with the teachers and "
                        "baselines they need")
    parser.add_argument("--dry_run", action="store_true", help="print the planned runs and their overrides only")
    args = parser.parse_args(argv)

    grid = load_grid(args.grid)
    seeds = args.seeds if args.seeds is not None else grid["seeds"]
    # a grid names its configs relative to the bundle, the command line relative to the working directory
    configs = ([str(Path(c).resolve()) for c in args.config] if args.config is not None
               else [str(bundle_root() / c) for c in grid["configs"]])
    out = Path(args.out).resolve()
    log = print

    dataset = Path(args.dataset_dir) if args.dataset_dir else bundle_root() / "data" / "Task09_Spleen"
    if (dataset / "dataset.json").is_file():
        dataset_dir = str(dataset.resolve())
        data_note = f"Data: the dataset at {dataset_dir}."
    elif args.dataset_dir:
        raise SystemExit(f"--dataset_dir {dataset} holds no dataset.json; download MSD Task09_Spleen with "
                         "`spleen-kd prepare-data --dataset_dir data/Task09_Spleen --download`.")
    else:
        dataset_dir = str(out / "phantoms")
        data_note = f"Data: {args.cases} procedural phantom volumes (seed {args.split_seed}) in {dataset_dir}."
    more_training = None
    if args.more_training:
        if not (Path(args.more_training) / "dataset.json").is_file():
            raise SystemExit(f"--more_training {args.more_training} holds no dataset.json; give a folder made by "
                             "`spleen-kd synthesize` or in the MSD layout.")
        more_training = str(Path(args.more_training).resolve())
        data_note += f" More training volumes (validation and test unchanged): {more_training}."
    runs = plan(grid, out, seeds, dataset_dir, args.split_seed)
    runs = select(runs, args.only) if args.only else runs
    teachers = sum(run.name.startswith("teacher-") for run in runs)
    log(f"grid '{grid['name']}': {len(runs)} runs = {teachers} teacher(s) + {len(runs) - teachers} student runs over "
        f"{len(seeds)} seed(s); configs {configs}; {data_note}")
    if args.dry_run:
        for run in runs:
            done = "done" if _marker(out, run.name, "evaluate").exists() else "todo"
            log(f"[{done}] {run.name}  ({' + '.join(Path(f).name for f in config_files(run.stage, *configs, *run.configs))})\n    "
                + json.dumps(run.overrides))
        return {"planned": [run.name for run in runs], "trained": [], "evaluated": []}

    out.mkdir(parents=True, exist_ok=True)
    if dataset_dir == str(out / "phantoms") and not (out / "phantoms" / "dataset.json").is_file():
        from .data.phantoms import make_phantom_dataset

        make_phantom_dataset(dataset_dir, cases=args.cases, seed=args.split_seed)
    _write_datalists(runs, configs, dataset_dir, args.split_seed, log, more_training)
    trained, evaluated = [], []
    for run in runs:
        files = config_files(run.stage, *configs, *run.configs)
        if _step(out, run.name, "train", lambda: _train(run, files), log):
            trained.append(run.name)
            _marker(out, run.name, "evaluate").unlink(missing_ok=True)  # a retrained run is evaluated again
        if _step(out, run.name, "evaluate", lambda: _evaluate(run, out, configs, log), log):
            evaluated.append(run.name)
    path = write_results(grid, runs, out, seeds, configs, data_note, args.split_seed)
    write_summary(runs, out, seeds, "spleen-kd grid " + " ".join(argv if argv is not None else sys.argv[1:]),
                  data_note)
    log(f"{len(trained)} trained, {len(evaluated)} evaluated now; results in {path}")
    return {"planned": [run.name for run in runs], "trained": trained, "evaluated": evaluated}


if __name__ == "__main__":
    main()
