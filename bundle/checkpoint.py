"""Checkpoints: atomic writing, and safe loading with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.handlers import CheckpointSaver
from torch import nn

from .files import atomic_open
from .switches import flag


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with Ignite's atomic mode switched back on.

    MONAI turns atomic saving off; Ignite's atomic ``DiskSaver`` writes to a temporary file in the
    target folder, ``os.replace``-s it into place and keeps it group/other readable, so a crash
    mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._evaluator = None
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True

    def attach(self, engine) -> None:
        super().attach(engine)
        self._evaluator = engine

    def state_dict(self) -> dict:
        """The best key-metric score and its file (and the evaluator's best metric), to keep with the training
        state: a resumed run that starts without them overwrites the best model at its first validation."""
        saved = self._key_metric_checkpoint.state_dict()["_saved"] if self._key_metric_checkpoint is not None else []
        state = {"saved": [(float(priority), str(filename)) for priority, filename in saved]}
        engine_state = getattr(self._evaluator, "state", None)
        if getattr(engine_state, "best_metric", None) is not None:
            state["best_metric"] = float(engine_state.best_metric)
            state["best_metric_epoch"] = int(engine_state.best_metric_epoch)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.load_state_dict({"_saved": [tuple(item) for item in state_dict["saved"]]})
        if self._evaluator is not None and "best_metric" in state_dict:
            self._evaluator.state.best_metric = state_dict["best_metric"]
            self._evaluator.state.best_metric_epoch = state_dict["best_metric_epoch"]


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

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _randomizables(trainer) -> list:
    """Every MONAI random object in the trainer's dataset (crops, augmentations, the random transforms they
    hold, dataset wrappers' pickers), in a fixed order, found the way MONAI's ``set_rnd`` walks a dataset.
    MONAI seeds them when the workflow is built, so without restoring them a resumed run replays the first
    epoch's random draws."""
    from monai.transforms import Randomizable

    found, seen = [], set()

    def collect(obj) -> None:
        if id(obj) in seen or isinstance(obj, (torch.Tensor, np.ndarray, str, bytes)):
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for child in obj:
                collect(child)
            return
        if isinstance(obj, Randomizable):
            found.append(obj)
        for key, value in getattr(obj, "__dict__", {}).items():
            if not key.startswith("__"):
                collect(value)

    collect(getattr(getattr(trainer, "data_loader", None), "dataset", None))
    return found


def _data_rng_state(trainer) -> dict:
    """Random state of the data pipeline: each distinct generator of the transforms once, which object uses
    which (``sharing``: some MONAI croppers share their parent's generator until they first run, then hold
    their own), and the loader's shuffling generator."""
    states, sharing, index = [], [], {}
    for obj in _randomizables(trainer):
        if id(obj.R) not in index:
            index[id(obj.R)] = len(states)
            states.append(_numpy_state(obj.R.get_state()))
        sharing.append(index[id(obj.R)])
    state = {"transforms": states, "sharing": sharing}
    generator = getattr(getattr(trainer, "data_loader", None), "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def _set_data_rng_state(trainer, state: dict) -> None:
    """Give every random object the generator it had when the state was saved, with the same sharing."""
    objects = _randomizables(trainer)
    if "sharing" not in state:
        raise ValueError("the training state was written by an older spleen-kd without the data pipeline's "
                         "generator layout: delete training_state.pt to start the run again.")
    if len(objects) != len(state["sharing"]):
        raise ValueError(f"the training state holds {len(state['sharing'])} random transforms but the configured "
                         f"data pipeline has {len(objects)}: it was written by another configuration.")
    generators = []
    for saved in state["transforms"]:
        generators.append(np.random.RandomState())
        generators[-1].set_state(_numpy_tuple(saved))
    for obj, which in zip(objects, state["sharing"]):
        obj.R = generators[which]
    loader = getattr(getattr(trainer, "data_loader", None), "generator", None)
    if loader is not None and "loader" in state:
        loader.set_state(state["loader"])


def _numpy_state(state: tuple) -> dict:
    """A numpy RandomState state as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_tuple(state: dict) -> tuple:
    return state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"]


def _set_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_tuple(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then ``os.replace``-d."""
    with atomic_open(path, "wb") as stream:
        torch.save(obj, stream)
    return Path(path)


def publish(best_model: str | os.PathLike, served: str | os.PathLike, enabled=True, network: nn.Module | None = None,
            **preprocessing) -> Path | None:
    """Copy a run's best checkpoint to the path inference and MONAI Label load (``models/model.pt``),
    atomically, so a server never reads half a file, and describe it beside (``model.json``: ``network``'s
    definition and the ``preprocessing`` it was trained with; :mod:`bundle.serving.model_info`). Only
    rank 0 of a distributed run copies; a run that never validated has no best checkpoint, and then the
    served model is left as it was."""
    import torch.distributed as dist

    if not flag(enabled):
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    source = Path(best_model)
    if not source.is_file():
        return None
    if source.resolve() != Path(served).resolve():
        with atomic_open(served, "wb") as stream:
            stream.write(source.read_bytes())
    if network is not None:
        from .serving import model_info

        model_info.write(served, getattr(network, "module", network), **preprocessing)
    return Path(served)


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
        state["data_rng"] = _data_rng_state(engine)
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
    if not flag(resume) or not path.is_file():
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
    if "data_rng" in state:
        _set_data_rng_state(trainer, state["data_rng"])
    trainer.logger.info(f"resumed from '{path}' at epoch {trainer.state.epoch}, iteration {trainer.state.iteration}")
    return True
