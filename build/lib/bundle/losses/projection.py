"""Helpers shared by the feature-distillation losses: learned projection heads, spatial alignment
and float32 evaluation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


class ProjectionHead(nn.Sequential):
    """Maps a feature map of any width into a shared embedding space: a linear 1×1 conv, or with
    ``hidden_channels`` 1×1 conv → ReLU → 1×1 conv.

    A registered submodule of its loss, so it is optimised and checkpointed with the student and
    simply not used at inference. Linear is the default for distillation: a deep head, especially on
    the teacher side, can solve the loss by itself instead of making the student's features useful.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None = None):
        if hidden_channels:
            super().__init__(
                nn.Conv2d(in_channels, hidden_channels, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden_channels, out_channels, 1),
            )
        else:
            super().__init__(nn.Conv2d(in_channels, out_channels, 1))


def common_size(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """The smaller of the two spatial sizes, per axis: features are compared at the coarser grid."""
    return tuple(min(x, y) for x, y in zip(a.shape[-2:], b.shape[-2:]))


def pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling to ``size`` (no-op when already there)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def full_precision(reference: torch.Tensor) -> torch.autocast:
    """Disable autocast on ``reference``'s device so the loss maths stay in float32 under AMP."""
    return torch.autocast(device_type=reference.device.type, enabled=False)


def teacher_on_student_grid(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The teacher's logits resized bilinearly to the student's grid, so a teacher with another output
    size can still be compared pixel by pixel."""
    if teacher_logits.shape[-2:] == student_logits.shape[-2:]:
        return teacher_logits
    return F.interpolate(teacher_logits, size=student_logits.shape[-2:], mode="bilinear", align_corners=False)


def positive_temperature(temperature: float) -> float:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    return float(temperature)
