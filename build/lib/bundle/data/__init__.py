"""Data: phantoms, datalists and splits, training slices, input validation, MSD download."""

from . import datalist, slicing  # noqa: F401
