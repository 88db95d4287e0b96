"""FitNets-style feature regression: the "MSE instead of contrastive" ablation (thesis table 4.10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .projection import common_size, full_precision, pool_to


class FeatureMSELoss(nn.Module):
    """MSE between the teacher features and the student features mapped by a learned 1×1 conv.

    Both maps are average-pooled to the smaller of their two spatial sizes. Pooling comes before
    the adapter: a 1×1 conv commutes with average pooling, so this is exact and cheaper.
    :class:`~bundle.losses.composite.LossTerm` detaches the teacher features, so the adapter and the
    student receive the gradients.
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        size = common_size(student_feat, teacher_feat)
        with full_precision(student_feat):
            student = self.adapter(pool_to(student_feat, size))
            teacher = pool_to(teacher_feat, size)
            return F.mse_loss(student, teacher)
