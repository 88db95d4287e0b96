"""Serving the student: the backend (ONNX Runtime on a CPU, PyTorch otherwise), the model's description
that every serving path reads, and a light command-line path that needs neither MONAI nor PyTorch.

Submodules are imported on first use: ``runtime``, ``model_info`` and ``light`` import no PyTorch.
"""

from .. import submodules_on_first_use

__getattr__ = submodules_on_first_use(__name__)
