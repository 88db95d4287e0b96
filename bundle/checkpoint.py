"""Checkpoints: atomic writing, and safe loading with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from monai.handlers import CheckpointSaver
from torch import nn

from .files import atomic_open


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
    return load_state(network, state, path, role, retrain)


def load_state(network: nn.Module, state, path: str | os.PathLike, role: str = "network", retrain: str = "") -> nn.Module:
    """``network.load_state_dict(state)`` with an error naming the file and every kind of mismatch."""
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


def _rng_state() -> dict:
    """Every random generator a training run draws from, as tensors and plain Python values (loadable
    with ``weights_only=True``)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then ``os.replace``-d."""
    with atomic_open(path, "wb") as stream:
        torch.save(obj, stream)
    return Path(path)


class TrainingStateSaver:
    """Saves everything needed to continue a run — ``save_dict`` (model, optimizer, distillation heads,
    scheduler ...), the trainer's epoch/iteration and the random generators — atomically after every
    ``interval`` epochs, to ``save_dir/training_state.pt``. Pair with :func:`resume_training`."""

    filename = "training_state.pt"

    def __init__(self, save_dir: str, save_dict: dict, interval: int = 1):
        self.path = Path(save_dir) / self.filename
        self.save_dict = dict(save_dict)
        self.interval = interval

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)

    def save(self, engine) -> None:
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                            "epoch_length": engine.state.epoch_length}
        state["rng"] = _rng_state()
        atomic_save(state, self.path)


def _unwrap(obj):
    """The module inside DistributedDataParallel / DataParallel, so checkpoints load without them."""
    return obj.module if isinstance(obj, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else obj


def resume_training(trainer, save_dir: str, save_dict: dict, resume: bool = True) -> bool:
    """Restore ``save_dict``, the trainer's epoch/iteration and the random generators from
    ``save_dir/training_state.pt`` so that ``trainer.run()`` continues where the run stopped.

    Returns False (and changes nothing) when ``resume`` is off or there is no state yet.
    """
    path = Path(save_dir) / TrainingStateSaver.filename
    if isinstance(resume, str):  # `--resume true` arrives from the command line as a string
        resume = resume.strip().lower() in ("1", "true", "yes")
    if not resume or not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"training state '{path}' cannot be read ({type(error).__name__}: {error}); delete it "
                         "to start the run from scratch.") from None
    missing = [name for name in save_dict if name not in state]
    if missing:
        raise ValueError(f"training state '{path}' has no {missing}: it was written by another workflow. "
                         "Point `train_state_dir` elsewhere or delete the file.")
    for name, obj in save_dict.items():
        target = _unwrap(obj)
        if isinstance(target, nn.Module):
            load_state(target, state[name], path, role=name)
        else:
            target.load_state_dict(state[name])
    trainer.state.epoch = state["trainer"]["epoch"]
    trainer.state.iteration = state["trainer"]["iteration"]
    _set_rng_state(state["rng"])
    trainer.logger.info(f"resumed from '{path}' at epoch {trainer.state.epoch}, iteration {trainer.state.iteration}")
    return True
