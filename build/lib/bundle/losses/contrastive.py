"""InfoNCE feature distillation at one scale (thesis eq. 3.6): the student embedding at an image
location must pick out the teacher embedding of the same image and location among all locations
of the batch."""

from __future__ import annotations

import math

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


def distinct_rows(rows: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of every distinct row of ``[N, C]`` (ascending).

    Clipped air and fat, or a slice drawn twice in one batch, give byte-identical cells: kept twice,
    a cell would be its own negative and the loss could not be minimised.
    """
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), rows.shape[0], dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0], device=rows.device), reduce="amin")
    return first.sort().values


class InfoNCEFeatureLoss(nn.Module):
    """Contrastive distillation between student and teacher feature maps of one scale.

    Both maps are average-pooled to at most ``grid × grid`` cells (cost bounded whatever the input
    size), projected by their own learned head to ``embed_dim`` and L2-normalised per cell. Student
    cells are contrasted against teacher cells of the batch: same image and cell is the positive,
    every other cell of this or another image a negative.

    What keeps it sound for a tiny student:

    * only distinct cells take part (exact duplicates of the teacher's pooled features are dropped),
      and with ``image`` given, cells whose pooled intensity is at most ``body_threshold`` (air and
      fat, clipped to 0 by the HU window) are dropped too, so no cell is its own negative;
    * linear heads by default (``hidden_dim=None``): no teacher-side head that can out-grow the student;
    * the loss is divided by ``log N`` (N cells), so chance level is 1 whatever the batch and grid, and
      its gradient stays in proportion to the segmentation loss.

    With ``supervised=True`` the positives are all teacher cells of the same class (spleen when at
    least half of the cell is spleen in ``label``). :class:`~bundle.losses.composite.LossTerm` detaches
    the teacher features, so only the teacher-side head learns from this loss.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        embed_dim: int = 32,
        grid: int = 8,
        temperature: float = 0.1,
        supervised: bool = False,
        hidden_dim: int | None = None,
        body_threshold: float | None = 0.0,
    ):
        super().__init__()
        if grid < 1 or temperature <= 0:
            raise ValueError(f"grid must be >= 1 and temperature > 0, got grid={grid}, temperature={temperature}.")
        self.student_head = ProjectionHead(student_channels, embed_dim, hidden_dim)
        self.teacher_head = ProjectionHead(teacher_channels, embed_dim, hidden_dim)
        self.grid = int(grid)
        self.temperature = float(temperature)
        self.supervised = bool(supervised)
        self.body_threshold = body_threshold

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, image: torch.Tensor | None = None,
                label: torch.Tensor | None = None) -> torch.Tensor:
        if self.supervised and label is None:
            raise ValueError("InfoNCEFeatureLoss(supervised=True) needs the label: forward(student, teacher, image, label).")
        if student_feat.shape[0] != teacher_feat.shape[0]:
            raise ValueError(f"batch sizes differ: student {student_feat.shape[0]}, teacher {teacher_feat.shape[0]}.")
        with full_precision(student_feat):
            size = self._grid(student_feat, teacher_feat)
            teacher_cells = pool_to(teacher_feat, size)
            keep = self.kept_cells(teacher_feat, image, student_feat)
            student = self._embed(self.student_head, pool_to(student_feat, size))[keep]
            if keep.numel() < 2:  # nothing to contrast: a zero that keeps the graph
                return student.sum() * 0.0
            teacher = self._embed(self.teacher_head, teacher_cells)[keep]
            mask = None
            if self.supervised:
                cls = (self._cells(pool_to(label.as_subclass(torch.Tensor).float(), size)) >= 0.5).reshape(-1)[keep]
                mask = cls[:, None] == cls[None, :]
            return info_nce(student, teacher, self.temperature, mask) / math.log(keep.numel())

    def _grid(self, *maps: torch.Tensor) -> tuple[int, int]:
        """Never more cells than the coarsest map has, so no cell is a copy of its neighbour."""
        return tuple(min(self.grid, *sizes) for sizes in zip(*(m.shape[-2:] for m in maps)))

    def kept_cells(self, teacher_feat: torch.Tensor, image: torch.Tensor | None = None,
                   student_feat: torch.Tensor | None = None) -> torch.Tensor:
        """Indices (rows ordered image, y, x) of the cells that take part: distinct teacher cells, inside
        the body when ``image`` is given."""
        size = self._grid(teacher_feat, *([] if student_feat is None else [student_feat]))
        keep = distinct_rows(self._cells(pool_to(teacher_feat.detach().float(), size)))
        if image is not None and self.body_threshold is not None:
            inside = self._cells(pool_to(image.detach().float(), size)).mean(dim=1) > self.body_threshold
            keep = keep[inside[keep]]
        return keep

    @staticmethod
    def _cells(x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` → ``[B·h·w, C]``, rows ordered (image, y, x)."""
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])

    def _embed(self, head: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled map → ``[B·h·w, D]`` unit vectors."""
        return self._cells(F.normalize(head(pooled), dim=1, eps=EPS))
