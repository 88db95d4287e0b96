"""spleen-kd: multi-task teacher -> tiny student UNet distillation for spleen CT segmentation.

Importing the package imports its submodules, so bundle configs can say ``$import bundle`` and
then ``bundle.networks.FeatureUNet`` (MONAI binds ``$import a.b`` to the name ``a.b``, not ``a``).
"""

from . import checkpoint, deploy, engine, handlers, losses, metrics, networks, tracking  # noqa: F401
from .data import datalist  # noqa: F401

__version__ = "0.1.0"
