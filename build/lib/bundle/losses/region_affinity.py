"""Distillation after Qin et al. 2021 ("Efficient Medical Image Segmentation Based on Knowledge
Distillation"), whose two terms are offered separately, plus one term of this project's own:

* :class:`RegionAffinityLoss` — their region-affinity distillation, the default: instead of copying
  features across an ambiguous organ boundary, the student matches how similar the teacher's mean
  features of the spleen and of the background are (cosine of the two region means).
* :class:`ImportanceMapLoss` — their importance-map distillation: the student matches where the
  teacher's features are strong (channel-wise mean of squared activations, normalised per image).
* :class:`PixelRegionAffinityLoss` — not in Qin et al.: every pixel's cosine similarity to each region
  mean, matched between student and teacher.

Qin et al. distil a low-level and a high-level feature map; here those are the ``encoder`` and
``decoder`` taps (``configs/kd.json`` declares ``region_affinity_encoder``; a decoder term reads
``network.decoder``/``teacher.decoder`` with the same loss). None needs an adapter: every quantity
compared is independent of the channel count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .projection import EPS, common_size, full_precision, pool_to


def _region_means(feat: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of the background and of the spleen (``[B, 2, C]``) and which regions are present
    (``[B, 2]`` bool). ``label`` (``[B, 1, H, W]``, spleen > 0.5) is resized to the feature grid by
    centred nearest neighbour."""
    label = label.as_subclass(torch.Tensor).float()  # plain tensor: MONAI metadata has no place in a loss
    spleen = F.interpolate(label, size=feat.shape[-2:], mode="nearest-exact") > 0.5
    masks = torch.cat([~spleen, spleen], dim=1).to(feat.dtype)
    area = masks.sum(dim=(2, 3))
    means = torch.einsum("bchw,brhw->brc", feat, masks) / area.clamp_min(1.0)[..., None]
    return means, area > 0


def region_affinity(feat: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity between the spleen's and the background's mean features (``[B]``), and which
    regions are present (``[B, 2]``)."""
    means, present = _region_means(feat, label)
    means = F.normalize(means, dim=2, eps=EPS)
    return (means[:, 0] * means[:, 1]).sum(dim=1), present


def pixel_region_affinity(feat: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of every pixel to the background and spleen means (``[B, 2, h, w]``), and which
    regions are present (``[B, 2]``)."""
    means, present = _region_means(feat, label)
    pixel = torch.einsum("bchw,brc->brhw", F.normalize(feat, dim=1, eps=EPS), F.normalize(means, dim=2, eps=EPS))
    return pixel, present


def importance_map(feat: torch.Tensor) -> torch.Tensor:
    """Where a ``[B, C, h, w]`` feature map is strong: the channel mean of squared activations,
    ``[B, 1, h, w]``."""
    return feat.pow(2).mean(dim=1, keepdim=True)


def _masked_mean(errors: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of per-image errors over the valid images; 0 (still attached to the graph) when none is."""
    valid = valid.to(errors.dtype)
    return (errors * valid).sum() / valid.sum().clamp_min(1.0)


class RegionAffinityLoss(nn.Module):
    """Qin et al.'s region-affinity distillation: squared difference between student and teacher
    spleen-to-background affinity (see :func:`region_affinity`).

    An image contributes only if spleen and background are both present at both feature resolutions
    (with one region there is no relation between regions to transfer); if none qualifies the loss is 0.
    """

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        with full_precision(student_feat):
            s_affinity, s_present = region_affinity(student_feat, label)
            t_affinity, t_present = region_affinity(teacher_feat, label)
            return _masked_mean((s_affinity - t_affinity).pow(2), (s_present & t_present).all(dim=1))


class PixelRegionAffinityLoss(nn.Module):
    """Not in Qin et al.: MSE between student and teacher pixel-to-region affinity maps (see
    :func:`pixel_region_affinity`), both average-pooled to the smaller of their sizes. Images qualify as
    for :class:`RegionAffinityLoss`."""

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        with full_precision(student_feat):
            s_pixel, s_present = pixel_region_affinity(student_feat, label)
            t_pixel, t_present = pixel_region_affinity(teacher_feat, label)
            size = common_size(s_pixel, t_pixel)
            errors = (pool_to(s_pixel, size) - pool_to(t_pixel, size)).pow(2).mean(dim=(1, 2, 3))
            return _masked_mean(errors, (s_present & t_present).all(dim=1))


class ImportanceMapLoss(nn.Module):
    """Qin et al.'s importance-map distillation: squared L2 distance between the student's and the
    teacher's :func:`importance_map`, each pooled to the smaller size and scaled to unit L2 norm per
    image (so only where the features are strong matters, not how strong), averaged over images."""

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        with full_precision(student_feat):
            s_map, t_map = importance_map(student_feat), importance_map(teacher_feat)
            size = common_size(s_map, t_map)
            s_map = F.normalize(pool_to(s_map, size).flatten(1), dim=1, eps=EPS)
            t_map = F.normalize(pool_to(t_map, size).flatten(1), dim=1, eps=EPS)
            return (s_map - t_map).pow(2).sum(dim=1).mean()
