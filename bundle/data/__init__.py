"""Data: synthetic CT and phantoms, datalists and splits, training slices, the package's own data (assets),
MSD download. Submodules are imported on first use (``bundle.data.assets`` needs no PyTorch)."""

from .. import submodules_on_first_use

__getattr__ = submodules_on_first_use(__name__)
