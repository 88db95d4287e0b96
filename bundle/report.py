"""Figures and tables for reports: overlay grids, training curves from TensorBoard logs, markdown tables, and
the record of one trained teacher of a teacher study."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _radiological(slice_xy: np.ndarray) -> np.ndarray:
    """RAS+ ``[x, y]`` → rows anterior-first, columns patient-right-first."""
    return np.asarray(slice_xy).T[::-1, ::-1]


def overlay_grid(images: Sequence[np.ndarray], columns: Mapping[str, Sequence[np.ndarray]], out_file: str | Path,
                 title: str = "") -> Path:
    """One row per slice: the CT slice, then each named mask (ground truth, students, teacher) overlaid in red.

    Slices are ``[x, y]`` arrays in RAS+ voxel order; they are shown with anterior up and the
    patient's right on the viewer's left, as radiologists read axial CT.
    """
    rows, names = len(images), list(columns)
    fig, axes = plt.subplots(rows, len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.2 * rows), squeeze=False)
    for r, image in enumerate(images):
        panels = [("image", None)] + [(name, columns[name][r]) for name in names]
        for c, (name, mask) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(_radiological(image), cmap="gray", vmin=0, vmax=1)
            if mask is not None:
                shown = _radiological(mask)
                ax.imshow(np.ma.masked_where(shown < 0.5, shown), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(name, fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_file = Path(out_file)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of the TensorBoard event files under ``log_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for event_file in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(points) for tag, points in series.items()}


def training_curves(runs: Mapping[str, str | Path], out_file: str | Path) -> Path:
    """One panel per logged scalar (each loss term, validation metrics), one line per run."""
    curves = {run: read_scalars(log_dir) for run, log_dir in runs.items()}
    tags = sorted({tag for series in curves.values() for tag in series})
    cols = min(3, max(len(tags), 1))
    rows = max(math.ceil(len(tags) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for run, series in curves.items():
            if tag in series:
                steps, values = zip(*series[tag])
                ax.plot(steps, values, label=run, linewidth=1)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("iteration" if len(series.get(tag, [])) > 50 else "epoch", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.tight_layout()
    out_file = Path(out_file)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def goal_marked(values: Sequence[float], goal: float) -> str:
    """Values as one table cell, ``" / "``-joined to three decimals, those at or above ``goal`` in bold: a
    study's per-training fixture Dice against the goal the model card sets."""
    return " / ".join(f"**{v:.3f}**" if v >= goal else f"{v:.3f}" for v in values)


_VALIDATION = re.compile(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)")
_EPOCH_TIME = re.compile(r"Trainer - INFO - Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([0-9.]+)")  # with validation


def teacher_run(folder: Path, log_file: Path, machine: str) -> dict:
    """One job of ``docs/results/teacher_choice.sh``: per-volume test Dice, best validation Dice and its epoch,
    fixture Dice and training seconds (a resumed run has only its last attempt timed, so it counts the sum of
    its logged epoch times); ``machine`` says where and beside what it ran."""
    from .stats import read_volume_metrics

    log = log_file.read_text()
    validation = {int(e): float(d) for e, d in _VALIDATION.findall(log)}  # a resumed run's repeats: the last counts
    best = max(validation, key=validation.get)
    resumed = "resumed from" in log
    epochs = {int(e): int(h) * 3600 + int(m) * 60 + float(sec) for e, h, m, sec in _EPOCH_TIME.findall(log)}
    real = next(iter(json.loads((folder / "real_ct.json").read_text()).values()))
    volumes = read_volume_metrics(folder / "eval" / "teacher" / "test" / "metrics.csv")
    return {"source": f"{folder} ({machine}" + (", interrupted and resumed)" if resumed else ")"),
            "test_dice_per_volume": {case: round(m["dice"], 4) for case, m in volumes.items()},
            "best_epoch": best, "validation_dice_best": round(validation[best], 4),
            "validation_dice_by_epoch": {e: round(d, 4) for e, d in sorted(validation.items())},
            "real_ct": {subject: r["dice"] for subject, r in real["subjects"].items()},
            "train_seconds": round(sum(epochs.values())) if resumed else int((folder / "train_seconds").read_text()),
            "train_seconds_counted": "sum of logged epoch times" if resumed else "wall time of the training command"}


def teacher_arm(note: str, parameters: int, seeds: dict) -> dict:
    """A teacher study's arm from its :func:`teacher_run` records by seed: their test Dice (per seed, mean ± std)
    and each test volume's Dice averaged over the seeds, the pairing unit of the study's tests."""
    from .stats import mean_std

    per_seed = [sum(s["test_dice_per_volume"].values()) / len(s["test_dice_per_volume"]) for s in seeds.values()]
    cases = sorted(next(iter(seeds.values()))["test_dice_per_volume"])
    mean, std, _ = mean_std(per_seed)
    return {"note": note, "parameters": parameters, "seeds": seeds,
            "test_dice_per_seed": [round(d, 4) for d in per_seed], "test_dice_mean": round(mean, 4),
            "test_dice_std": round(std, 4),
            "test_dice_per_volume": {c: sum(s["test_dice_per_volume"][c] for s in seeds.values()) / len(seeds)
                                     for c in cases}}


TEACHER_TABLE_HEADER = ["| arm | parameters | test Dice, mean ± std over seeds (per seed) | best validation Dice (epoch) "
                        "by seed | `example_ct_sm` by seed | DICOM series by seed | train minutes |",
                        "| --- | --- | --- | --- | --- | --- | --- |"]


def teacher_arm_row(name: str, arm: dict, goal: float) -> str:
    """One arm of a teacher study (its ``parameters``, test Dice over ``seeds`` of :func:`teacher_run` records)
    as a row under ``TEACHER_TABLE_HEADER``; fixture Dice at or above ``goal`` in bold."""
    seeds = arm["seeds"].values()
    fixtures = [goal_marked([s["real_ct"][subject] for s in seeds], goal) for subject in ("example_ct_sm", "example_ct_dicom")]
    minutes = ", ".join("–" if s["train_seconds"] is None else f"{s['train_seconds'] / 60:.0f}" for s in seeds)
    return (f"| {name} | {arm['parameters'] / 1e6:.2f} M | {arm['test_dice_mean']:.3f} ± {arm['test_dice_std']:.3f} "
            f"({', '.join(f'{d:.3f}' for d in arm['test_dice_per_seed'])}) | "
            + " / ".join(f"{s['validation_dice_best']:.3f} ({s['best_epoch']})" for s in seeds)
            + f" | {fixtures[0]} | {fixtures[1]} | {minutes} |")


def _spleen_slice(image_path: str, label_path: str) -> tuple:
    """The axial slice with the most spleen, in RAS with the label on the image grid."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ResampleToMatchd

    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                    ResampleToMatchd("label", "image", mode="nearest"), Orientationd(["image", "label"], "RAS")])
    data = load({"image": image_path, "label": label_path})
    image, label = np.asarray(data["image"][0]), np.asarray(data["label"][0]).round() == 1
    z = int(label.sum(axis=(0, 1)).argmax())
    spacing = [float(s) for s in data["image"].pixdim[:2]]
    return image[:, :, z], label[:, :, z], spacing


def real_and_synthetic_figure(synthetic_dir: Path, figure: Path, columns: int = 4,
                              window: tuple[float, float] = (-160.0, 240.0)) -> Path:
    """Real CT slices (top row) and synthetic ones (bottom row), the same HU window, spleen outlined."""
    import json

    from .data.assets import REAL_CASES

    rows = {"real CT": [(str(image), str(label), name) for name, (image, label) in REAL_CASES.items()]}
    cases = json.loads((synthetic_dir / "dataset.json").read_text())["training"][:columns]
    rows["synthetic"] = [(str(synthetic_dir / c["image"]), str(synthetic_dir / c["label"]),
                          f"synthetic {i} ({c['source'].split('_')[0]})") for i, c in enumerate(cases)]
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.8), squeeze=False)
    for row, (kind, entries) in enumerate(rows.items()):
        for column in range(columns):
            axis = axes[row, column]
            axis.axis("off")
            if column >= len(entries):
                continue
            image, label, spacing = _spleen_slice(*entries[column][:2])
            extent = [0, image.shape[0] * spacing[0], 0, image.shape[1] * spacing[1]]
            axis.imshow(image.T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", extent=extent)
            axis.contour(label.T.astype(float), [0.5], colors="r", linewidths=0.8, origin="lower", extent=extent)
            axis.set_title(f"{entries[column][2]}\n{image.shape[0]}×{image.shape[1]}, {spacing[0]:.2f} mm", fontsize=9)
    fig.suptitle(f"real (top) and synthetic (bottom) CT, window {window[0]:.0f}…{window[1]:.0f} HU, spleen in red; "
                 "image x = patient's right", fontsize=10)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=90)
    plt.close(fig)
    return figure


def arms_figure(per_volume: Mapping[str, Mapping[str, float]], fixtures: Mapping[str, Mapping[str, Sequence[float]]],
                goal: float, out_file: str | Path, ylabel: str = "per-volume 3D Dice (mean over seeds)") -> Path:
    """A study's arms side by side: left, each test volume's seed-averaged Dice (a grey line joins a volume
    across arms, so paired differences show); right, each training's Dice on the real fixtures, with the goal."""
    names, cases = list(per_volume), list(next(iter(per_volume.values())))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for case in cases:
        left.plot(range(len(names)), [per_volume[n][case] for n in names], color="grey", alpha=0.3, lw=0.8)
    for i, name in enumerate(names):
        values = [per_volume[name][c] for c in cases]
        left.scatter([i] * len(cases), values, s=12)
        left.errorbar(i, float(np.mean(values)), fmt="k_", markersize=20)
    left.set_xticks(range(len(names)), names, fontsize=9)
    left.set_ylabel(ylabel)
    left.set_title(f"synthetic test split ({len(cases)} volumes)", fontsize=10)
    subjects = list(next(iter(fixtures.values())))
    for j, subject in enumerate(subjects):
        for i, name in enumerate(names):
            values = fixtures[name][subject]
            right.scatter([i + (j - 0.5) * 0.2] * len(values), values, marker="os"[j % 2], color=f"C{i}",
                          label=subject if i == 0 else None, facecolors="none" if j % 2 else None)
    right.axhline(goal, color="grey", lw=0.8, ls="--")
    right.set_xticks(range(len(names)), names, fontsize=9)
    right.set_ylabel("Dice on the real fixture (one point a training)")
    right.set_title("real CT fixtures (regression check)", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    plt.close(fig)
    return Path(out_file)
