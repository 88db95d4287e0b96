"""Serving helpers: an ONNX Runtime session that an inferer can call like a network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


class OnnxRuntimeNetwork(nn.Module):
    """Runs an exported student (``onnx_export`` with a dynamic batch axis; slices of the configured size) with ONNX Runtime on the CPU.

    ``SliceInferer`` calls it with ``[B, 1, H, W]`` tensors and gets logits back as tensors, so the
    rest of ``configs/inference.json`` is unchanged whichever backend is chosen.
    """

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 0, spinning: bool = False):
        """``threads``: intra-op threads (0: ONNX Runtime's default, one per core). ``spinning``: let idle
        threads busy-wait for work; off by default, because between batches the CPU is needed by
        the pre- and post-processing and by whatever else runs on the machine."""
        super().__init__()
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ONNX model '{path}' does not exist. Export the student first: python -m monai.bundle onnx_export "
                "network_def --filepath models/model.onnx --ckpt_file models/model.pt --meta_file configs/metadata.json "
                "--config_file configs/inference.json --input_shape \"[1, 1, 256, 256]\" --converter_kwargs "
                "\"{'dynamic_axes': {'x': {0: 'batch'}}, 'input_names': ['x']}\"")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one chain of convolutions: nothing to run side by side
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.path = path
        self.version = ort.__version__
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.precision = self.metadata.get("spleen_kd_precision", "fp32")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).to(x.device)
