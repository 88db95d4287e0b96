"""spleen-kd: multi-task teacher -> tiny student UNet distillation for spleen CT segmentation.

Submodules are imported on first use, so bundle configs can say ``$import bundle`` and then
``bundle.networks.FeatureUNet`` or ``bundle.data.datalist.X`` (MONAI binds ``$import a.b`` to the
name ``a.b``, not ``a``), while inference does not pay for what only training needs (MLflow,
TensorBoard, the losses).
"""

import importlib

__version__ = "0.9.0"

_SUBMODULES = ("arrays", "checkpoint", "checks", "data", "engine", "files", "handlers", "io", "losses", "metrics", "networks",
               "report", "reproducibility", "serving", "stats", "switches", "teacher", "tracking", "transforms",
               "workflows")


def __getattr__(name: str):
    if name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f".{name}", __name__)


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))


def submodules_on_first_use(package: str):
    """A package's ``__getattr__`` that imports ``package.<name>`` on first use, so that
    ``bundle.<package>.<module>`` works in config expressions; a missing name stays an AttributeError."""

    def getattr_(name: str):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return getattr_
