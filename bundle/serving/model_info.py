"""What a served checkpoint needs to be used right: its network, slice size, HU window, orientation and
threshold, written beside it (``model.pt`` → ``model.json``) when a run publishes it.

``configs/inference.json``, MONAI Label (through inference.json) and the light path
(:mod:`bundle.serving.light`) all read the preprocessing from here, so they cannot drift apart. The
description holds the checkpoint's SHA-256: a checkpoint replaced by other means (MONAI Label's training,
a copy by hand) no longer matches it, and the configs' defaults (:data:`DEFAULTS`, equal to
``configs/train.json``'s) apply instead. No PyTorch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

# configs/train.json's student and preprocessing (a test keeps the two equal)
DEFAULTS = {
    "network_def": {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1,
                    "channels": [16, 32], "bottleneck": 64, "convs_per_block": 1},
    "slice_size": 256,
    "hu_window": [-57, 164],
    "axcodes": "RAS",
    "pixdim": [-1, -1, -1],
    "threshold": 0.5,
    "largest_component": True,
}
PREPROCESSING_KEYS = tuple(DEFAULTS)


def info_path(ckpt_path: str | os.PathLike) -> Path:
    return Path(ckpt_path).with_suffix(".json")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read(ckpt_path: str | os.PathLike, check: bool = True) -> dict:
    """The description of ``ckpt_path``'s checkpoint merged over :data:`DEFAULTS`. Without a description,
    or (``check``) with one that describes other weights, the defaults alone, with a warning for the latter."""
    path = info_path(ckpt_path)
    if not path.is_file():
        return dict(DEFAULTS)
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"model description '{path}' is unreadable ({error}); delete it (the configs' defaults "
                         "then apply) or publish the checkpoint again.") from None
    if check and Path(ckpt_path).is_file() and info.get("checkpoint_sha256") != sha256(ckpt_path):
        logger.warning("'%s' describes other weights than '%s' (SHA-256 differs): using the configs' defaults "
                       "(slice size %s, window %s); publish the checkpoint again to describe it.", path, ckpt_path,
                       DEFAULTS["slice_size"], DEFAULTS["hu_window"])
        return dict(DEFAULTS)
    return {**DEFAULTS, **info}


def network_definition(network) -> dict:
    """``{"_target_": ..., **arguments}`` of a bundle network from its ``hparams`` (what rebuilds it)."""
    hparams = getattr(network, "hparams", None)
    if hparams is None:
        raise TypeError(f"{type(network).__name__} keeps no `hparams`, so its definition cannot be written; "
                        "use a network of bundle.networks.")
    return {"_target_": f"{type(network).__module__}.{type(network).__qualname__}", **hparams}


def write(ckpt_path: str | os.PathLike, network, **fields) -> Path:
    """Describe the checkpoint at ``ckpt_path`` (which must exist): ``network`` (an instance), the
    preprocessing ``fields`` (keys of :data:`DEFAULTS`) and anything else given (``provenance``, ``figures``)."""
    from ..files import atomic_write_text

    unknown = {k for k in fields if k not in DEFAULTS} - {"provenance", "figures", "name"}
    if unknown:
        raise ValueError(f"unknown model description fields {sorted(unknown)}.")
    info = {"network_def": network_definition(network), **{k: v for k, v in fields.items()},
            "checkpoint_sha256": sha256(ckpt_path)}
    path = info_path(ckpt_path)
    atomic_write_text(path, json.dumps(info, indent=2, default=list))
    return path


def described(ckpt_path: str | os.PathLike, key: str, default):
    """``key`` of the description beside ``ckpt_path`` when there is one, else ``default``: training into the
    folder of a served model (MONAI Label fine-tuning ``models/model.pt``) keeps that model's preprocessing,
    so the inference config that describes it stays true after training."""
    path = info_path(ckpt_path)
    if not path.is_file():
        return default
    return read(ckpt_path, check=False).get(key, default)
