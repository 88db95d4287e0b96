"""spleen-kd: multi-task teacher -> tiny student UNet distillation for spleen CT segmentation.

Submodules are imported on first use, so bundle configs can say ``$import bundle`` and then
``bundle.networks.FeatureUNet`` or ``bundle.data.datalist.X`` (MONAI binds ``$import a.b`` to the
name ``a.b``, not ``a``), while inference does not pay for what only training needs (MLflow,
TensorBoard, the losses).
"""

import importlib

__version__ = "0.2.0"

_SUBMODULES = ("checkpoint", "data", "deploy", "engine", "files", "handlers", "inference", "losses", "metrics",
               "networks", "quantize", "report", "reproducibility", "stats", "switches", "teacher",
               "tracking")
# reachable as bundle.<package>.<name> in config expressions once bundle.<package> is
_PACKAGE_SUBMODULES = {"data": ("datalist", "slicing"), "losses": ("composite",)}


def __getattr__(name: str):
    if name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{name}", __name__)
    for submodule in _PACKAGE_SUBMODULES.get(name, ()):
        importlib.import_module(f".{name}.{submodule}", __name__)
    return module


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
