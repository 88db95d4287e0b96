"""Losses: segmentation, reconstruction and the distillation terms, and their composition.

``composite`` is imported here so that config expressions reach ``bundle.losses.composite`` whatever
imported ``bundle.losses`` first."""

from . import composite  # noqa: F401
