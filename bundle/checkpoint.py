"""Checkpoints: atomic writing, and safe loading with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from monai.handlers import CheckpointSaver
from torch import nn


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with Ignite's atomic mode switched back on.

    MONAI turns atomic saving off; Ignite's atomic ``DiskSaver`` writes to a temporary file in the
    target folder, ``os.replace``-s it into place and keeps it group/other readable, so a crash
    mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True


def load_weights(network: nn.Module, path: str | os.PathLike, role: str = "network", train_hint: str = "") -> nn.Module:
    """Load a checkpoint into ``network`` safely (``weights_only=True``), with errors that name the file.

    Accepts a bare ``state_dict`` (what ``CheckpointSaver`` writes for one object) or a dict holding
    it under ``"model"``.
    """
    path = Path(path)
    retrain = f" Train it first: {train_hint}" if train_hint else ""
    if not path.is_file():
        raise FileNotFoundError(f"{role} checkpoint '{path}' does not exist.{retrain}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{role} checkpoint '{path}' cannot be read ({type(error).__name__}: {error}); "
                         f"the file is corrupt or not a PyTorch checkpoint.{retrain}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{role} checkpoint '{path}' holds a {type(state).__name__}, not a state_dict.{retrain}")
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)):
            if items:
                problems.append(f"{len(items)} {label} (e.g. {items[0]})")
        raise ValueError(
            f"{role} checkpoint '{path}' does not fit the configured {type(network).__name__}: "
            f"{'; '.join(problems)}. Was it trained with another network definition? Make `{role}_def` match "
            f"the one it was trained with.{retrain}"
        )
    network.load_state_dict(state)
    return network
