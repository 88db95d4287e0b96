"""Dense logit distillation that works for tiny students: channel-wise distillation (CWD) and DIST's
inter-pixel correlation, on segmentation logits.

Both compare *where* the teacher puts its mass rather than forcing the student to copy the teacher's
logit scale, which a 57 k-parameter network cannot do. A single sigmoid logit ``z`` is read as the two
class maps ``[-z, z]`` (background and spleen log-odds), so nothing degenerates to a constant.
"""

from __future__ import annotations

import torch
from torch import nn

from .projection import EPS, full_precision, positive_temperature, teacher_on_student_grid


def class_maps(logits: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` per-class score maps; one sigmoid logit becomes ``[-z, z]``."""
    return torch.cat([-logits, logits], dim=1) if logits.shape[1] == 1 else logits


def _aligned(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's maps and the teacher's on the student's grid, refused unless they pair up."""
    teacher = teacher_on_student_grid(student, teacher)
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ "
                         "in batch size or classes.")
    return student, teacher


class ChannelWiseDistillation(nn.Module):
    """CWD (Shu et al., ICCV 2021): ``τ²/C · Σ_c KL(softmax_HW(t_c/τ) ‖ softmax_HW(s_c/τ))``, averaged over images.

    Each class map is turned into a distribution over pixels, so the student learns which pixels the
    teacher ranks as most spleen-like (and most background-like), whatever its own logit range.
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = positive_temperature(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        with full_precision(student_logits):
            student, teacher = _aligned(class_maps(student_logits), class_maps(teacher_logits))
            t = self.temperature
            log_p_s = (student / t).flatten(2).log_softmax(dim=2)
            log_p_t = (teacher / t).flatten(2).log_softmax(dim=2)
            kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=2)  # [B, C]
            return kl.mean(dim=1).mean() * t**2


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (a constant vector correlates 0)."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + EPS)


class InterPixelCorrelation(nn.Module):
    """DIST's relation term for a sigmoid head (Huang et al., NeurIPS 2022): ``1 − ρ(σ(s/τ), σ(t/τ))``,
    the Pearson correlation over the pixels of each image, averaged over images.

    DIST's other (inter-class) term is identically ±1 for two complementary probabilities, so only this
    one carries information for a single-logit head. Invariant to any affine rescaling of the student's
    probabilities: the student must order and space its pixels like the teacher, not match its values.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = positive_temperature(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        with full_precision(student_logits):
            student, teacher = _aligned(student_logits, teacher_logits)
            if student.shape[1] == 1:
                p_s, p_t = torch.sigmoid(student / self.temperature), torch.sigmoid(teacher / self.temperature)
            else:
                p_s = (student / self.temperature).softmax(dim=1)
                p_t = (teacher / self.temperature).softmax(dim=1)
            rho = pearson(p_s.flatten(1), p_t.flatten(1))  # per image, over classes × pixels
            return (1.0 - rho).mean()
