"""Losses: segmentation, reconstruction and the distillation terms the engine composes."""
