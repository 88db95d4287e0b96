"""Pseudo-labels: the simplest use of unlabelled volumes, the baseline distillation has to beat.

The frozen teacher's prediction on a slice becomes the student's segmentation target (FLARE22's winner
trained its small model this way on 2,000 unlabelled scans). ``soft=False``: the teacher's mask
(probability above ``threshold``); ``soft=True``: its probabilities themselves. The loss is the
student's own segmentation loss (MONAI's ``DiceCELoss`` with sigmoid), so on those slices the student
is trained exactly as if the teacher's output were a label. The target comes from ``teacher.seg``,
never from a file, and is cached with the teacher's outputs.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from .projection import full_precision, teacher_on_student_grid


class PseudoLabelLoss(nn.Module):
    """``DiceCE(student_logits, target)`` with ``target = 1[sigmoid(teacher) > threshold]`` (or ``sigmoid(teacher)``)."""

    def __init__(self, soft: bool = False, threshold: float = 0.5):
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}.")
        self.soft, self.threshold = bool(soft), float(threshold)
        self.loss = DiceCELoss(sigmoid=True)

    def target(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        probability = torch.sigmoid(teacher_on_student_grid(student_logits, teacher_logits.detach()))
        return probability if self.soft else (probability > self.threshold).to(probability.dtype)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        with full_precision(student_logits):
            student_logits = student_logits.float()
            return self.loss(student_logits, self.target(student_logits, teacher_logits.float()))
