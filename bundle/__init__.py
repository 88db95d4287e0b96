"""spleen-kd: multi-task teacher -> tiny student UNet distillation for spleen CT segmentation.

Submodules are imported on first use, so bundle configs can say ``$import bundle`` and then
``bundle.networks.FeatureUNet`` or ``bundle.data.datalist.X`` (MONAI binds ``$import a.b`` to the
name ``a.b``, not ``a``), while inference does not pay for what only training needs (MLflow,
TensorBoard, the losses).
"""

import importlib

__version__ = "0.3.0"

_SUBMODULES = ("arrays", "checkpoint", "data", "engine", "files", "handlers", "io", "losses", "metrics", "networks",
               "report", "reproducibility", "serving", "stats", "switches", "teacher", "tracking", "transforms",
               "workflows")


def __getattr__(name: str):
    if name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f".{name}", __name__)


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
