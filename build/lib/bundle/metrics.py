"""Per-volume 3D segmentation metrics in millimetres, and model cost (parameters, FLOPs per slice).

Conventions for empty masks (stated, never NaN crashes):

* label and prediction both empty: Dice, IoU, precision, recall and Surface Dice are 1, HD95 is 0 mm;
* exactly one empty: Dice, IoU and Surface Dice are 0; precision is 0 if only the prediction has
  voxels (all false positives) and 1 if the prediction is empty (no false positives); recall mirrors
  it; HD95 is undefined and recorded as ``nan`` — summaries count such cases in ``hd95_undefined``
  and average HD95 over the rest.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import SurfaceDiceMetric, compute_hausdorff_distance, compute_surface_dice
from torch.utils.flop_counter import FlopCounterMode

from .files import atomic_open, atomic_write_text
from .networks import count_parameters


def _spatial(mask) -> torch.Tensor:
    """A ``[H, W, D]`` bool tensor from a mask with any number of leading singleton (batch, channel) dims."""
    mask = torch.as_tensor(mask).as_subclass(torch.Tensor)
    while mask.ndim > 3 and mask.shape[0] == 1:
        mask = mask[0]
    return mask.bool()


def volume_metrics(pred, label, spacing: Sequence[float], tolerance_mm: float = 2.0) -> dict[str, float]:
    """Metrics of one binary 3D prediction against its label on the same grid; ``spacing`` in mm per voxel axis."""
    pred, label = _spatial(pred), _spatial(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} are on different grids: "
                         "resample the label onto the image's grid (nearest) before computing metrics.")
    tp = (pred & label).sum().item()
    n_pred, n_label = pred.sum().item(), label.sum().item()
    if n_pred == 0 and n_label == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "surface_dice": 1.0, "hd95_mm": 0.0}
    result = {
        "dice": 2 * tp / (n_pred + n_label),
        "iou": tp / (n_pred + n_label - tp),
        "precision": tp / n_pred if n_pred else 1.0,
        "recall": tp / n_label if n_label else 1.0,
    }
    if n_pred == 0 or n_label == 0:
        return {**result, "surface_dice": 0.0, "hd95_mm": math.nan}
    spacing = [float(s) for s in spacing]
    y_pred, y = pred[None, None].float(), label[None, None].float()
    result["surface_dice"] = compute_surface_dice(
        y_pred, y, class_thresholds=[tolerance_mm], include_background=True, spacing=spacing).item()
    result["hd95_mm"] = compute_hausdorff_distance(
        y_pred, y, include_background=True, percentile=95, spacing=spacing).item()
    return result


class MillimetreSurfaceDice(SurfaceDiceMetric):
    """MONAI's ``SurfaceDiceMetric`` with the tolerance in mm on every volume's own voxel spacing, read from the
    label's affine (Ignite metric handlers pass no spacing, so the plain metric measures in voxels)."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        if kwargs.get("spacing") is None and hasattr(y, "affine"):
            affine = torch.as_tensor(y.affine, dtype=torch.float64)
            affine = affine[None] if affine.ndim == 2 else affine
            spatial = y.ndim - 2
            kwargs["spacing"] = torch.linalg.norm(affine[:, :spatial, :spatial], dim=1).tolist()
        return super()._compute_tensor(y_pred, y, **kwargs)


def psnr(reconstruction: torch.Tensor, image: torch.Tensor, max_value: float = 1.0) -> float:
    mse = torch.mean((reconstruction.float() - image.float()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(max_value**2 / mse)


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, std, median (and count) per metric over volumes, ignoring undefined (nan) values."""
    summary = {}
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))] if rows else []
    for key in keys:
        values = np.array([row[key] for row in rows], dtype=float)
        defined = values[~np.isnan(values)]
        stats = {"mean": float(defined.mean()) if defined.size else math.nan,
                 "std": float(defined.std(ddof=1)) if defined.size > 1 else 0.0,
                 "median": float(np.median(defined)) if defined.size else math.nan,
                 "n": int(defined.size)}
        if defined.size < values.size:
            stats["undefined"] = int(values.size - defined.size)
        summary[key] = stats
    return summary


def flops_per_slice(network: torch.nn.Module, size: int, in_channels: int = 1) -> int:
    """Forward FLOPs of one ``size``×``size`` slice (multiply-add counted as 2), by PyTorch's counter."""
    parameter = next(network.parameters())
    counter = FlopCounterMode(display=False)
    was_training = network.training
    network.eval()
    with counter, torch.no_grad():
        network(torch.zeros(1, in_channels, size, size, device=parameter.device, dtype=parameter.dtype))
    network.train(was_training)
    return int(counter.get_total_flops())


def write_report(rows: list[dict], out_dir: str | os.PathLike, extra: dict | None = None) -> dict:
    """Write ``metrics.csv`` (one row per volume) and ``summary.json`` atomically; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"volumes": len(rows), "metrics": summarize([{k: v for k, v in r.items() if k != "case"} for r in rows])}
    summary.update(extra or {})
    with atomic_open(out_dir / "metrics.csv") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def check_same_grid(pred, label, case: str) -> None:
    """Refuse to score a prediction against a label on another grid (shape or affine): the voxels would not
    correspond and the metrics would be silently wrong."""
    pred_affine, label_affine = getattr(pred, "affine", None), getattr(label, "affine", None)
    if pred_affine is None or label_affine is None:
        return
    if tuple(pred.shape[-3:]) != tuple(label.shape[-3:]) or not torch.allclose(
            torch.as_tensor(pred_affine).double(), torch.as_tensor(label_affine).double(), atol=1e-3):
        raise ValueError(
            f"case '{case}': the prediction (shape {tuple(pred.shape[-3:])}, affine {pred_affine.tolist()}) and the "
            f"label (shape {tuple(label.shape[-3:])}, affine {label_affine.tolist()}) are on different grids. Put "
            "the label on the image's grid (ResampleToMatchd, nearest) and invert the prediction to it (Invertd).")


def case_ids(paths: Sequence[str]) -> list[str]:
    """Case names unique within a split: each file's path relative to the folder all of them share
    (``case_1/image.nii.gz`` rather than ``image.nii.gz``); the base name when there is one case."""
    paths = [str(p) for p in paths]
    if len(paths) < 2:
        return [os.path.basename(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    except ValueError:  # paths on different drives
        return paths
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


class VolumeMetricsHandler:
    """Ignite handler: per-volume metrics of each evaluated case (batch size 1), report at the end.

    Reads ``pred`` (binary, in the label's space), ``label`` and optionally ``rec``/``image`` (for PSNR,
    in the network's input space) from the evaluator's decollated output; spacing comes from the
    label's metadata, so distances are in mm.
    """

    def __init__(self, out_dir: str, tolerance_mm: float = 2.0, network: torch.nn.Module | None = None,
                 slice_size: int | None = None, extra: dict | None = None):
        self.out_dir = out_dir
        self.tolerance_mm = tolerance_mm
        self.network = network
        self.slice_size = slice_size
        self.extra = dict(extra or {})
        self.rows: list[dict] = []
        self.summary: dict | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._report)

    def _collect(self, engine) -> None:
        for item in engine.state.output:
            label, pred = item["label"], item["pred"]
            spacing = [float(s) for s in label.pixdim[:3]] if hasattr(label, "pixdim") else [1.0, 1.0, 1.0]
            source = item["image"] if hasattr(item["image"], "meta") else label
            case = str(getattr(source, "meta", {}).get("filename_or_obj", len(self.rows)))
            check_same_grid(pred, label, case)
            row = {"case": case, **volume_metrics(pred, label, spacing, self.tolerance_mm)}
            if item.get("rec") is not None:
                row["psnr"] = psnr(item["rec"], item["image"])
            self.rows.append(row)

    def _report(self, engine) -> None:
        for row, case in zip(self.rows, case_ids([row["case"] for row in self.rows])):
            row["case"] = case
        extra = dict(self.extra)
        if self.network is not None:
            extra["params"] = count_parameters(self.network)
            if self.slice_size:
                extra["flops_per_slice"] = flops_per_slice(self.network, self.slice_size)
        self.summary = write_report(self.rows, self.out_dir, extra)
        engine.logger.info(f"per-volume metrics of {len(self.rows)} volumes written to {self.out_dir}: "
                           + ", ".join(f"{k} {v['mean']:.4f}" for k, v in self.summary["metrics"].items()))
