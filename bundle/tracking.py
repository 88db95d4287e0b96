"""What MLflow records about a run: the parameters that define it, in a flat, comparable form."""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from .networks import count_parameters

HYPERPARAMETERS = ("temperature", "grid", "embed_dim", "supervised")


def file_sha256(path: str | Path, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _network_summary(prefix: str, network: nn.Module) -> dict[str, object]:
    return {prefix: type(network).__name__, f"{prefix}.params": count_parameters(network),
            **{f"{prefix}.{k}": v for k, v in getattr(network, "hparams", {}).items()}}


def run_params(network: nn.Module, loss: nn.Module, seed: int, train_split: str, student_fraction: float,
               slice_size: int, epochs: int, learning_rate: float, teacher: nn.Module | None = None,
               teacher_ckpt: str | None = None, spleen_free_volumes: int | None = None) -> dict[str, object]:
    """Flat dict for ``MLFlowHandler(experiment_param=...)``: networks, every loss term with its weight and
    hyper-parameters, data split and fraction, seed, the teacher checkpoint's SHA-256, and how many
    labelled training volumes hold no spleen."""
    params: dict[str, object] = {"seed": seed, "train_split": train_split, "student_fraction": student_fraction,
                                 "slice_size": slice_size, "epochs": epochs, "learning_rate": learning_rate}
    if spleen_free_volumes is not None:
        params["spleen_free_volumes"] = spleen_free_volumes
    params.update(_network_summary("network", network))
    terms = getattr(loss, "terms", {})
    params["loss_terms"] = ",".join(terms)
    for name, term in terms.items():
        params[f"{name}.weight"] = term.weight
        for attribute in HYPERPARAMETERS:
            if hasattr(term.loss, attribute):
                params[f"{name}.{attribute}"] = getattr(term.loss, attribute)
    if teacher is not None:
        params.update(_network_summary("teacher", teacher))
        if teacher_ckpt and Path(teacher_ckpt).is_file():
            params["teacher.checkpoint"] = str(teacher_ckpt)
            params["teacher.sha256"] = file_sha256(teacher_ckpt)
    return params
