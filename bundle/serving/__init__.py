"""Serving the student: the backend (ONNX Runtime on a CPU, PyTorch otherwise), the model's description
that every serving path reads, and a light command-line path that needs neither MONAI nor PyTorch.

Submodules are imported on first use: ``runtime``, ``model_info`` and ``light`` import no PyTorch.
"""


def __getattr__(name: str):
    """``bundle.<package>.<module>`` in config expressions imports the module on first use."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
