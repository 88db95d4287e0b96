"""Prediction-map distillation (thesis eq. 3.4): the student matches the teacher's softened
per-pixel class distribution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .projection import full_precision, positive_temperature, teacher_on_student_grid


def _two_class(logits: torch.Tensor) -> torch.Tensor:
    """A single sigmoid logit ``z`` as the equivalent softmax pair ``[0, z]`` (background first).

    A softmax over one channel is identically 1, so its KL is identically 0: the single-logit head
    must be expanded before distilling.
    """
    return torch.cat([torch.zeros_like(logits), logits], dim=1)


class PredictionMapDistillation(nn.Module):
    """``T² · KL(softmax(z_T/T) ‖ softmax(z_S/T))``, summed over classes, averaged over pixels.

    Averaging over ``B·H·W`` (not ``batchmean``) keeps the scale independent of the image size.
    Single-logit (sigmoid) maps use the two-class form, so a sigmoid student can also learn from a
    two-channel softmax teacher. Teacher logits of another spatial size are resized bilinearly to
    the student's; :class:`~bundle.losses.composite.LossTerm` detaches them, so only the student receives
    gradients.
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = positive_temperature(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        with full_precision(student_logits):
            student, teacher = student_logits, teacher_on_student_grid(student_logits, teacher_logits)
            if student.shape[1] == 1:
                student = _two_class(student)
            if teacher.shape[1] == 1:
                teacher = _two_class(teacher)
            if student.shape[1] != teacher.shape[1]:
                raise ValueError(
                    f"student and teacher predict different classes: {student_logits.shape[1]} vs "
                    f"{teacher_logits.shape[1]} channels."
                )
            t = self.temperature
            log_p_student = F.log_softmax(student / t, dim=1)
            log_p_teacher = F.log_softmax(teacher / t, dim=1)
            kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
            return kl.mean() * t**2
