"""The student on the fastest backend present, decided in one place: :class:`AxialSliceInferer`.

``configs/inference.json`` and MONAI Label both hand the inferer a PyTorch network with its weights
loaded (inference.json through :func:`load_student`; MONAI Label builds ``network_def`` and loads
``models/model.pt`` itself). On a CPU with ONNX Runtime installed (``backend="auto"``), the inferer runs
the network's ONNX export instead, 3–4× faster for the student: the export is kept on disk
(``onnx_path``) tagged with :func:`weights_key`, the one key that says which weights and slice size an
ONNX model comes from, and is reused by every later process until the weights change.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type, convert_to_tensor
from torch import nn

from ..arrays import located_logits
from ..checkpoint import load_weights
from .runtime import ONNX_DESCRIPTION, ONNX_KEY, OnnxModel, available_cores, process_settings

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")


def use_threads(threads: int = 0) -> int:
    """One PyTorch intra-op thread per available core (0 = all of them); more only fight over the cores."""
    threads = threads or available_cores()
    torch.set_num_threads(threads)
    return threads


def resolve_backend(backend: str, device: str | torch.device = "cpu") -> str:
    """``auto``: ONNX Runtime on a CPU when it is installed, else PyTorch (always PyTorch on a GPU)."""
    import importlib.util

    if backend not in BACKENDS:
        raise ValueError(f"inference backend '{backend}' is not one of {BACKENDS}; set `backend` in "
                         "configs/inference.json or pass --backend auto|torch|onnx.")
    if backend != "auto":
        return backend
    on_cpu = torch.device(device).type == "cpu"
    return "onnx" if on_cpu and importlib.util.find_spec("onnxruntime") is not None else "torch"


def weights_key(network: nn.Module, slice_size: int) -> str:
    """SHA-256 of a network's structure, weights and slice size: what an ONNX model exported from it
    depends on (S1 and S1-fast share their parameter shapes, so the weights alone do not say which)."""
    digest = hashlib.sha256(repr(network).encode())
    digest.update(str(int(slice_size)).encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX model (:class:`bundle.serving.runtime.OnnxModel`) called like a network: ``[B, 1, H, W]``
    tensors in, logits as tensors out, so the rest of a pipeline is the same whichever backend runs."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 0, spinning: bool = False):
        super().__init__()
        self.model = OnnxModel(onnx_path, threads, spinning)
        self.path, self.version, self.metadata = self.model.path, self.model.version, self.model.metadata
        self.precision = self.model.precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.model(array)).to(x.device)


def export_onnx(network: nn.Module, onnx_path: str | os.PathLike, slice_size: int, key: str | None = None,
                description: dict | None = None) -> Path:
    """Export with a dynamic batch axis (input ``x``, output ``logits``), tagged with ``key`` (default:
    :func:`weights_key`) and, when given, the checkpoint's ``model.json`` description (its SHA-256, network
    definition and preprocessing) under ``ONNX_DESCRIPTION``; written atomically."""
    import json

    import onnx

    from ..files import atomic_open

    network = network.cpu().eval()
    key = key or weights_key(network, slice_size)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(network, (torch.zeros(1, 1, slice_size, slice_size),), buffer, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    props = {ONNX_KEY: key}
    if description is not None:
        props[ONNX_DESCRIPTION] = json.dumps(description, sort_keys=True, default=list)
    onnx.helper.set_model_props(model, props)
    with atomic_open(onnx_path, "wb") as stream:
        stream.write(model.SerializeToString())
    return Path(onnx_path)


def onnx_for(network: nn.Module, slice_size: int, onnx_path: str | os.PathLike | None, threads: int = 0,
             description: dict | None = None) -> OnnxRuntimeNetwork:
    """The ONNX Runtime session of ``network``'s weights: ``onnx_path`` as it is when its key matches
    (an int8 model made from these weights included), else exported there (into memory when ``onnx_path``
    is None or cannot be written) with ``description`` (the checkpoint's ``model.json``), as
    ``spleen-kd export`` writes it. A stale int8 model is refused: quantize again."""
    import copy

    key = weights_key(network, slice_size)
    if onnx_path is not None and Path(onnx_path).is_file():
        session = OnnxRuntimeNetwork(onnx_path, threads=threads)
        if session.metadata.get(ONNX_KEY) == key:
            return session
        if session.precision == "int8":
            raise ValueError(f"the int8 ONNX model '{onnx_path}' was made from other weights or another slice size; "
                             "quantize again: spleen-kd quantize --help")
        logger.info("ONNX model '%s' comes from other weights: exporting it again", onnx_path)
    if onnx_path is not None:
        try:
            return OnnxRuntimeNetwork(export_onnx(copy.deepcopy(network), onnx_path, slice_size, key, description),
                                      threads=threads)
        except OSError as error:
            logger.warning("cannot write the ONNX model '%s' (%s): exporting into memory", onnx_path, error)
    with tempfile.TemporaryDirectory() as tmp:  # the session keeps the model in memory
        return OnnxRuntimeNetwork(export_onnx(copy.deepcopy(network), Path(tmp) / "model.onnx", slice_size, key,
                                              description), threads=threads)


def load_student(network: nn.Module, ckpt_path: str | os.PathLike, device: str | torch.device = "cpu",
                 onnx_path: str | os.PathLike | None = None) -> nn.Module:
    """``network`` with the checkpoint's weights, in eval mode on ``device``. Without a checkpoint, an ONNX
    model at ``onnx_path`` is served as it is (a deployment may ship only the ``.onnx``)."""
    if not Path(ckpt_path).is_file() and onnx_path is not None and Path(onnx_path).is_file():
        logger.info("no checkpoint at '%s': using the ONNX model '%s' as it is", ckpt_path, onnx_path)
        return OnnxRuntimeNetwork(onnx_path)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"the model checkpoint '{ckpt_path}' does not exist: train a student first "
                                "(spleen-kd train kd; the run publishes models/model.pt) or set --ckpt_path.")
    return load_weights(network, ckpt_path, role="network").to(device).eval()


class AxialSliceInferer(Inferer):
    """Runs a 2D network on every axial slice of ``[B, C, H, W, D]`` volumes, ``batch_size`` slices at a time.

    Gives what ``SliceInferer(roi_size=(H, W), spatial_dim=2)`` gives when the slices already have the
    network's size (``Resized`` in the preprocessing sees to that), without the sliding-window
    bookkeeping, which costs about as much as the tiny student on a 512×512×100 volume.

    Decides the backend (see the module docstring): a PyTorch network in eval mode on the CPU runs through
    ONNX Runtime when ``backend`` allows it (``auto``, ``onnx``); ``torch`` runs what it is given. The
    first call sets the process up for segmenting volumes (threads, freed memory kept, fast gzip) and
    logs what it chose.
    """

    def __init__(self, batch_size: int = 16, backend: str = "auto", threads: int = 0,
                 onnx_path: str | os.PathLike | None = None, locate_threshold: float | None = None,
                 description: dict | None = None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        resolve_backend(backend)  # a clear error for an unknown name, at construction
        self.batch_size, self.backend, self.threads, self.onnx_path = batch_size, backend, threads, onnx_path
        self.description = description  # the checkpoint's model.json, written into an ONNX model it exports
        self.locate_threshold = locate_threshold  # set: segment only the located slab (arrays.located_logits)
        self._served: tuple[str, nn.Module] | None = None  # (weights_key, session) last exported
        self._process: tuple[int, str] | None = None

    def _set_up(self) -> tuple[int, str]:
        if self._process is None:
            self._process = (use_threads(self.threads), process_settings())
        return self._process

    def served(self, network, slice_shape: tuple[int, int]):
        """``network``, or the ONNX Runtime session made from it (see the class docstring)."""
        threads, process = self._set_up()
        if isinstance(network, OnnxRuntimeNetwork):
            self._log(f"onnxruntime {network.version} ({network.precision}), {threads} threads, "
                                    f"model '{network.path}' (requested: {self.backend}); {process}")
            return network
        parameter = next(network.parameters(), None) if isinstance(network, nn.Module) else None
        if (parameter is None or network.training or slice_shape[0] != slice_shape[1]
                or resolve_backend(self.backend, parameter.device) != "onnx"):
            device = parameter.device if parameter is not None else "cpu"
            self._log(f"torch {torch.__version__} on {device}, {threads} threads "
                                    f"(requested: {self.backend}); {process}")
            return network
        key = weights_key(network, slice_shape[0])
        if self._served is None or self._served[0] != key:
            session = onnx_for(network, slice_shape[0], self.onnx_path, threads, self.description)
            self._served = (key, session)
            self._log(f"onnxruntime {session.version} ({session.precision}), {threads} threads, model "
                                 f"'{self.onnx_path or 'in memory'}' exported from the PyTorch network (requested: "
                                 f"{self.backend}); {process}")
        return self._served[1]

    def _run(self, network, slices: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        outputs = [network(slices[i:i + self.batch_size].contiguous(), *args, **kwargs)
                   for i in range(0, slices.shape[0], self.batch_size)]
        if not all(isinstance(out, torch.Tensor) for out in outputs):
            raise TypeError("AxialSliceInferer needs a network that returns one tensor; wrap multi-output networks "
                            "in bundle.networks.SelectOutputs or use monai.inferers.SliceInferer.")
        return torch.cat(outputs)

    def _log(self, message: str) -> None:
        """Log the backend when the choice changes (not for every volume)."""
        if message != getattr(self, "_logged", None):
            logger.info("inference backend: %s", message)
            self._logged = message

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"AxialSliceInferer expects [B, C, H, W, D] volumes, got shape {tuple(inputs.shape)}.")
        batch, channels, height, width, depth = inputs.shape
        network = self.served(network, (height, width))
        volumes = convert_to_tensor(inputs, track_meta=False).permute(0, 4, 1, 2, 3)  # [B, D, C, H, W]
        per_volume = []
        for slices in volumes:
            if self.locate_threshold is None:
                per_volume.append(self._run(network, slices, *args, **kwargs))
            else:
                run = lambda index: self._run(network, slices[torch.as_tensor(index)], *args, **kwargs)  # noqa: E731
                per_volume.append(located_logits(depth, run, self.locate_threshold)[0])
        logits = torch.stack(per_volume).permute(0, 2, 3, 4, 1)  # [B, C, H, W, D]
        return convert_to_dst_type(logits, inputs)[0]
