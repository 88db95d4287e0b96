"""The teacher of a distillation run: freezing it, caching its outputs, and teachers that are not this
bundle's own (any MONAI or PyTorch segmentation network, 2D or 3D).

The logit terms (DIST, CWD, PMD) need nothing from a teacher but its spleen logit on the student's
slice, so any segmentation network can teach:

- :class:`SliceTeacher` wraps a 2D network: the trainer calls it on the student's slices as it calls
  a :class:`~bundle.networks.FeatureUNet`; feature terms read modules named in the config (forward hooks).
- :class:`VolumeTeacher` wraps a 3D network (a model-zoo bundle, say). It cannot run on a slice, so it
  runs once per volume, with its own preprocessing and its ``SlidingWindowInferer``, in the data
  pipeline (:class:`TeacherLogitsd`, after the student's preprocessing): its logit is resampled onto
  the student's grid through the two images' affines and travels with the volume as ``teacher_seg``,
  so whatever slice the student samples, labelled or not, the teacher's slice is the same crop. The
  trainer reads it from the batch (``precomputed``) instead of calling a network.

:func:`from_bundle` builds a :class:`VolumeTeacher` from a MONAI bundle folder (its
``configs/inference.json`` ``network_def``, ``preprocessing`` and ``inferer``, its ``models/model.pt``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, ResampleToMatch
from torch import nn

from .checkpoint import load_weights


def freeze(network: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher's weights and BatchNorm statistics never change."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


class TeacherCache:
    """Memory-bounded store of a frozen teacher's per-slice outputs, keyed by the slice's content.

    Without augmentation the same slices come back every epoch and the frozen teacher (eval mode,
    so per-sample BatchNorm) gives the same outputs, so they are computed once. Keys are hashes of the
    input bytes: an augmented or otherwise new slice simply misses, it can never get a stale answer.
    Entries stop being added once ``max_megabytes`` is reached; ``dtype`` (e.g. ``float16``) halves it.
    """

    def __init__(self, max_megabytes: float = 1024, dtype: torch.dtype | None = None):
        self.max_bytes = int(max_megabytes * 2**20)
        self.dtype = dtype
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[bytes, dict[str, torch.Tensor]] = {}

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        data = image.detach().cpu().contiguous()
        digest = hashlib.blake2b(str(tuple(data.shape)).encode(), digest_size=16)
        digest.update(data.numpy().tobytes())
        return digest.digest()

    def __len__(self) -> int:
        return len(self._entries)

    def outputs(self, teacher: nn.Module, inputs: torch.Tensor, keys: set[str]) -> dict[str, torch.Tensor]:
        """Teacher outputs for a batch: cached slices are gathered, the others computed and stored."""
        slice_keys = [self.key(x) for x in inputs]
        first_rows: dict[bytes, int] = {}  # each uncached slice once, however often the batch repeats it
        for row, key in enumerate(slice_keys):
            if key not in self._entries and key not in first_rows:
                first_rows[key] = row
        self.misses += len(first_rows)
        self.hits += len(slice_keys) - len(first_rows)
        fresh: dict[bytes, dict[str, torch.Tensor]] = {}
        if first_rows:
            computed = teacher(inputs[list(first_rows.values())], return_features=True)
            for position, key in enumerate(first_rows):
                fresh[key] = {name: computed[name][position] for name in keys}
                self._store(key, fresh[key])
        found = [fresh[key] if key in fresh else self._entries[key] for key in slice_keys]
        return {name: torch.stack([entry[name].to(inputs.device, inputs.dtype) for entry in found]) for name in keys}

    def _store(self, key: bytes, entry: dict[str, torch.Tensor]) -> None:
        # a copy of the row: a view would keep the whole batch's tensor alive (on CPU `.to` does not copy)
        stored = {k: v.detach().to("cpu", self.dtype or v.dtype, copy=True) for k, v in entry.items()}
        size = sum(v.untyped_storage().nbytes() for v in stored.values())
        if self.bytes + size <= self.max_bytes:
            self._entries[key] = stored
            self.bytes += size


ACTIVATIONS = ("sigmoid", "softmax")
DOWNLOAD_HINT = ("On a machine with internet access: `python -m monai.bundle download spleen_ct_segmentation "
                 "--bundle_dir bundles` gives bundles/spleen_ct_segmentation.")


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"`teacher_activation` is {activation!r}; use one of {ACTIVATIONS}.")


def binary_logit(logits: torch.Tensor, channel: int, activation: str, dim: int = 1) -> torch.Tensor:
    """The logit ``z`` with ``sigmoid(z)`` = the teacher's probability of ``channel`` (kept as a size-1 ``dim``).

    ``sigmoid`` teachers give it directly. For ``softmax`` teachers it is ``log p_c / (1 - p_c)`` =
    ``l_c - logsumexp_{j != c} l_j``, exact and stable, so a two-class (background, spleen) or a
    multi-organ teacher becomes the student's one-channel logit.
    """
    check_activation(activation)
    count = logits.shape[dim]
    if not -count <= channel < count:
        raise ValueError(f"`teacher_channel` {channel} does not exist: the teacher gives {count} channel(s).")
    channel %= count
    own = logits.narrow(dim, channel, 1)
    if activation == "sigmoid":
        return own
    if count < 2:
        raise ValueError("a softmax teacher needs at least two channels; use `teacher_activation` 'sigmoid'.")
    others = torch.cat([logits.narrow(dim, 0, channel), logits.narrow(dim, channel + 1, count - channel - 1)], dim)
    return own - torch.logsumexp(others, dim=dim, keepdim=True)


def _module(network: nn.Module, name: str, key: str) -> nn.Module:
    modules = dict(network.named_modules())
    if name not in modules:
        near = [m for m in modules if m and (name.split(".")[0] in m)][:5]
        raise ValueError(f"`features` names module {name!r} for {key!r}, which {type(network).__name__} does "
                         f"not have{'; similar: ' + str(near) if near else ''}. List them with "
                         "`[n for n, _ in network.named_modules()]`.")
    return modules[name]


class SliceTeacher(nn.Module):
    """A 2D segmentation network as a teacher: ``seg`` is its spleen logit, features come from hooks.

    ``features`` maps the names loss terms read (``encoder``, ``bottleneck``, ``decoder``) to module
    names of ``network``; a term reading a feature that is not mapped is refused by the trainer before
    the first step. ``feature_channels`` is measured once on a probe slice of ``probe_size``.
    """

    def __init__(self, network: nn.Module, channel: int = 0, activation: str = "sigmoid",
                 features: Mapping[str, str] | None = None, in_channels: int = 1, probe_size: int = 64):
        super().__init__()
        self.network = network
        self.channel, self.activation = channel, activation
        self.feature_modules = {key: _module(network, name, key) for key, name in (features or {}).items()}
        self.provides = {"seg", *self.feature_modules}
        self._taken: dict[str, torch.Tensor] = {}
        for key, module in self.feature_modules.items():
            module.register_forward_hook(self._keeper(key))
        self.feature_channels: dict[str, int] = {}
        if self.feature_modules:
            parameter = next(network.parameters(), None)
            probe = torch.zeros(1, in_channels, probe_size, probe_size,
                                device=parameter.device if parameter is not None else "cpu")
            was_training = network.training
            with torch.no_grad():
                self(probe.to(parameter.dtype if parameter is not None else torch.float32), return_features=True)
            network.train(was_training)
            self.feature_channels = {key: int(self._last[key].shape[1]) for key in self.feature_modules}

    def _keeper(self, key: str):
        def keep(_module, _inputs, output):
            self._taken[key] = output[0] if isinstance(output, (tuple, list)) else output
        return keep

    def forward(self, x: torch.Tensor, return_features: bool = False):
        self._taken = {}
        out = self.network(x)
        out = out[0] if isinstance(out, (tuple, list)) else out  # deep-supervision heads: the full-size one
        seg = binary_logit(out, self.channel, self.activation)
        if not return_features:
            return seg
        self._last = dict(self._taken)
        return {"seg": seg, **self._last}


def feature_channels(teacher: nn.Module | None, name: str) -> int:
    """Channels of ``teacher``'s feature ``name``, for building a feature term's projector.

    Every term of ``loss_terms`` is built, also those ``distill`` does not select; for a feature the
    teacher does not give, a placeholder of 1 lets the unused term be built. A selected term that reads
    it is refused by the trainer (:meth:`~bundle.engine.ComposedLossTrainer`) with the fix.
    """
    channels = getattr(teacher, "feature_channels", None) or {}
    return int(channels.get(name, 1))


class VolumeTeacher(nn.Module):
    """A 3D segmentation network as a teacher, run per volume (see the module docstring).

    ``preprocessing`` maps ``{"image": path}`` to the teacher's input (its own loading, orientation,
    spacing and HU window: a model-zoo bundle's ``preprocessing``); ``inferer`` is usually a
    ``SlidingWindowInferer``. Results are cached by content (the teacher's input and the target grid),
    up to ``cache_megabytes``; once full, further volumes are computed and not kept.
    """

    precomputed = {"seg": "teacher_seg"}  # output name -> batch key the trainer reads
    provides = {"seg"}
    feature_channels: dict[str, int] = {}

    def __init__(self, network: nn.Module, preprocessing: Callable[[dict], dict], inferer: Callable,
                 channel: int = 1, activation: str = "softmax", device: str | torch.device | None = None,
                 cache_megabytes: float = 2048, amp: bool = False, image_key: str = "image"):
        super().__init__()
        check_activation(activation)
        self.network = network
        self.preprocessing, self.inferer = preprocessing, inferer
        self.channel, self.activation = channel, activation
        self.device = torch.device(device) if device is not None else None
        self.amp, self.image_key = amp, image_key
        self.max_bytes = int(cache_megabytes * 2**20)
        self.bytes = self.hits = self.misses = 0
        self._entries: dict[bytes, torch.Tensor] = {}

    def forward(self, *args, **kwargs):
        raise RuntimeError("a VolumeTeacher does not run on slices: put bundle.teacher.TeacherLogitsd in the "
                           "training transforms (configs/teacher_bundle.json does) and the trainer reads its "
                           "`teacher_seg` from the batch.")

    def _run(self, image: MetaTensor) -> MetaTensor:
        """The teacher's spleen logit ``(1, *spatial)`` on its own grid."""
        device = self.device or next(self.network.parameters()).device
        self.network.to(device).eval()
        with torch.no_grad(), torch.autocast(device.type, enabled=self.amp and device.type == "cuda"):
            logits = self.inferer(torch.as_tensor(image)[None].to(device, torch.float32), self.network)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        seg = binary_logit(torch.as_tensor(logits).float(), self.channel, self.activation)[0].cpu()
        return MetaTensor(seg, affine=image.affine)

    def on_grid(self, source, target: MetaTensor) -> MetaTensor:
        """The teacher's logit resampled (trilinear, through world coordinates) onto ``target``'s grid."""
        item = self.preprocessing({self.image_key: source})
        image = item[self.image_key]
        key = self._key(image, target)
        if key in self._entries:
            self.hits += 1
            return MetaTensor(self._entries[key].clone(), affine=target.affine, meta=dict(target.meta))
        self.misses += 1
        moved = ResampleToMatch(mode="bilinear", padding_mode="border")(self._run(image), img_dst=target)
        result = torch.as_tensor(moved).float().contiguous()
        size = result.untyped_storage().nbytes()
        if self.bytes + size <= self.max_bytes:
            self._entries[key] = result.clone()
            self.bytes += size
        return MetaTensor(result, affine=target.affine, meta=dict(target.meta))

    @staticmethod
    def _key(image: MetaTensor, target: MetaTensor) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        for array in (torch.as_tensor(image), image.affine, target.affine):
            data = torch.as_tensor(array).detach().cpu().contiguous()
            digest.update(str((tuple(data.shape), str(data.dtype))).encode())
            digest.update(data.numpy().tobytes())
        digest.update(str(tuple(target.shape[1:])).encode())
        return digest.digest()

    def __len__(self) -> int:
        return len(self._entries)


class TeacherLogitsd(MapTransform):
    """Adds ``output_key``: the :class:`VolumeTeacher`'s logit on the grid of ``keys`` (the student's image,
    already preprocessed), computed from the file the image came from. Deterministic, so ``CacheDataset``
    keeps it with the volume; list ``output_key`` with the slicing and spatial augmentation keys."""

    def __init__(self, teacher: VolumeTeacher, keys: KeysCollection = "image", output_key: str = "teacher_seg"):
        super().__init__(keys)
        self.teacher, self.output_key = teacher, output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        key = self.first_key(d)
        image = d[key]
        source = getattr(image, "meta", {}).get("filename_or_obj")
        if not source:
            raise ValueError(f"TeacherLogitsd: '{key}' does not say which file it came from (no "
                             "meta['filename_or_obj']); a volume teacher reads the image itself, with its own preprocessing.")
        d[self.output_key] = self.teacher.on_grid(source, image)
        return d


def _bundle_file(folder: Path, relative: str, what: str) -> Path:
    path = folder / relative
    if not path.is_file():
        raise FileNotFoundError(f"teacher bundle '{folder}' has no {relative} ({what}); `teacher_bundle` must be a MONAI "
                                f"bundle folder with configs/inference.json and models/model.pt. {DOWNLOAD_HINT}")
    return path


def from_bundle(folder: str | os.PathLike, channel: int = 1, activation: str | None = None,
                device: str | torch.device | None = None, cache_megabytes: float = 2048, amp: bool = False,
                inferer_overrides: Mapping | None = None, config: str = "configs/inference.json",
                weights: str = "models/model.pt") -> VolumeTeacher:
    """A :class:`VolumeTeacher` from a MONAI bundle folder, e.g. the model zoo's ``spleen_ct_segmentation``.

    Reads ``network_def``, ``preprocessing`` and ``inferer`` from its inference config (so the teacher
    keeps its own orientation, spacing and HU window) and its weights; ``inferer_overrides`` changes
    the sliding window (``roi_size``, ``overlap``, ``sw_batch_size``). ``activation`` None: ``softmax``
    for a network of two or more output channels, else ``sigmoid``.
    """
    from monai.bundle import ConfigParser

    if folder is None:
        raise ValueError(f"set `teacher_bundle` to a MONAI bundle folder (--teacher_bundle /path/to/bundle). {DOWNLOAD_HINT}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher bundle '{folder}' (key `teacher_bundle`) is not a folder. {DOWNLOAD_HINT}")
    config_path = _bundle_file(folder, config, "its inference config")
    weights_path = _bundle_file(folder, weights, "its weights")
    parser = ConfigParser()
    parser.read_config(str(config_path))
    parser["bundle_root"] = str(folder)
    for key in ("network_def", "preprocessing", "inferer"):
        if key not in parser:
            raise ValueError(f"'{config_path}' has no `{key}`; a teacher bundle's inference config must define "
                             "network_def, preprocessing and inferer, as MONAI model-zoo bundles do.")
    for key, value in (inferer_overrides or {}).items():
        parser[f"inferer#{key}"] = value
    network = parser.get_parsed_content("network_def")
    load_weights(network, weights_path, role="teacher")
    if activation is None:
        out_channels = getattr(network, "out_channels", None)
        activation = "softmax" if out_channels is None or out_channels > 1 else "sigmoid"
    return VolumeTeacher(network, parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer"),
                         channel=channel, activation=activation, device=device, cache_megabytes=cache_megabytes, amp=amp)


def write_bundle(weights: str | os.PathLike, folder: str | os.PathLike, network_args: Mapping, pixdim, hu_window,
                 axcodes: str = "RAS", roi_size=(96, 96, 32), network: str = "UNet") -> Path:
    """Write a trained 3D network as a MONAI bundle folder (``configs/inference.json`` with ``network_def``,
    ``preprocessing`` and ``inferer``; ``configs/metadata.json``; ``models/model.pt``), the layout of the
    model zoo, so that ``configs/teacher_bundle.json`` (and ``monai.bundle run``) can load it."""
    import json
    import shutil

    import monai

    from .files import atomic_open, atomic_write_text

    weights, folder = Path(weights), Path(folder)
    if not weights.is_file():
        raise FileNotFoundError(f"'{weights}' does not exist: the 3D teacher run never validated, so it has no best "
                                "checkpoint; train for at least `val_interval` epochs.")
    preprocessing = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": axcodes},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [float(p) for p in pixdim], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": float(hu_window[0]), "a_max": float(hu_window[1]),
         "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]
    inference = {
        "bundle_root": ".",
        "network_def": {"_target_": network, **dict(network_args)},
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(r) for r in roi_size], "sw_batch_size": 4,
                    "overlap": 0.25},
    }
    metadata = {
        "version": "0.1.0", "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "name": "spleen-kd 3D teacher", "task": "spleen CT segmentation (3D, sliding window)",
        "network_data_format": {"inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                                                      "spatial_shape": [int(r) for r in roi_size]}},
                                "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                                     "channel_def": {"0": "background", "1": "spleen"}}}},
    }
    (folder / "models").mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "configs" / "inference.json", json.dumps(inference, indent=4) + "\n")
    atomic_write_text(folder / "configs" / "metadata.json", json.dumps(metadata, indent=4) + "\n")
    with weights.open("rb") as source, atomic_open(folder / "models" / "model.pt", "wb") as target:
        shutil.copyfileobj(source, target)
    return folder
