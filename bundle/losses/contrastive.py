"""InfoNCE feature distillation at one scale (thesis eq. 3.6): the student embedding at an image
location must pick out the teacher embedding of the same image and location among all locations
of the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .projection import EPS, ProjectionHead, full_precision, pool_to


def info_nce(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    temperature: float,
    positive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over the ``N × N`` logits ``S·Tᵀ/τ`` of ``[N, D]`` embeddings.

    Without a mask the positive of row ``i`` is column ``i`` (cross-entropy on the diagonal).
    With a boolean ``[N, N]`` mask each row averages ``−log softmax`` over its positives
    (SupCon-style); a row without any positive contributes zero.
    """
    logits = student_emb.float() @ teacher_emb.float().T / temperature
    log_prob = logits.log_softmax(dim=1)
    if positive_mask is None:
        return -log_prob.diagonal().mean()
    mask = positive_mask.to(log_prob.dtype)
    per_row = (log_prob * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return -per_row.mean()


class InfoNCEFeatureLoss(nn.Module):
    """Contrastive distillation between student and teacher feature maps of one scale.

    Both maps are average-pooled to at most ``grid × grid`` cells (cost bounded whatever the input
    size), projected by their own learned head to ``embed_dim`` and L2-normalised per cell. The
    ``B·grid²`` student cells are contrasted against all teacher cells of the batch: same image and
    cell is the positive, every other cell of this or another image a negative. With
    ``supervised=True`` the positives are all teacher cells of the same class (spleen when at
    least half of the cell is spleen in ``label``).

    The teacher features are detached here: only the teacher-side head learns from this loss.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        embed_dim: int = 64,
        grid: int = 8,
        temperature: float = 0.1,
        supervised: bool = False,
        hidden_dim: int = 128,
    ):
        super().__init__()
        if grid < 1 or temperature <= 0:
            raise ValueError(f"grid must be >= 1 and temperature > 0, got grid={grid}, temperature={temperature}.")
        self.student_head = ProjectionHead(student_channels, embed_dim, hidden_dim)
        self.teacher_head = ProjectionHead(teacher_channels, embed_dim, hidden_dim)
        self.grid = int(grid)
        self.temperature = float(temperature)
        self.supervised = bool(supervised)

    def forward(
        self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.supervised and label is None:
            raise ValueError("InfoNCEFeatureLoss(supervised=True) needs the label: forward(student, teacher, label).")
        if student_feat.shape[0] != teacher_feat.shape[0]:
            raise ValueError(f"batch sizes differ: student {student_feat.shape[0]}, teacher {teacher_feat.shape[0]}.")
        # Never more cells than the coarser map has, so no cell is a duplicate of its neighbour.
        size = tuple(min(self.grid, s, t) for s, t in zip(student_feat.shape[-2:], teacher_feat.shape[-2:]))
        with full_precision(student_feat):
            student = self._embed(self.student_head, student_feat.float(), size)
            teacher = self._embed(self.teacher_head, teacher_feat.detach().float(), size)
            mask = None
            if self.supervised:
                cls = (pool_to(label.as_subclass(torch.Tensor).float(), size) >= 0.5).reshape(-1)
                mask = cls[:, None] == cls[None, :]
            return info_nce(student, teacher, self.temperature, mask)

    @staticmethod
    def _embed(head: nn.Module, feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[B, C, H, W]`` → ``[B·h·w, D]`` unit vectors, rows ordered (image, y, x)."""
        emb = F.normalize(head(pool_to(feat, size)), dim=1, eps=EPS)
        return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
