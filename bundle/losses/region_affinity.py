"""Region-affinity distillation after Qin et al. 2021 ("Efficient Medical Image Segmentation Based
on Knowledge Distillation"): instead of copying features across an ambiguous organ boundary, the
student mimics how different the teacher's representations of the spleen and the background are."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .projection import EPS, common_size, full_precision, pool_to


def region_affinity(feat: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affinities of a ``[B, C, h, w]`` feature map to its background and spleen regions.

    ``label`` (``[B, 1, H, W]``, spleen > 0.5) is resized to ``h × w`` by nearest neighbour
    (pixel centres). Returns the cosine similarity of every pixel to each region mean
    (``[B, 2, h, w]``, background then spleen), the cosine similarity between the two region means
    (``[B]``), and which regions are present (``[B, 2]`` bool). Cosines make it width-agnostic.
    """
    label = label.as_subclass(torch.Tensor).float()  # plain tensor: MONAI metadata has no place in a loss
    spleen = F.interpolate(label, size=feat.shape[-2:], mode="nearest-exact") > 0.5
    masks = torch.cat([~spleen, spleen], dim=1).to(feat.dtype)
    area = masks.sum(dim=(2, 3))
    means = torch.einsum("bchw,brhw->brc", feat, masks) / area.clamp_min(1.0)[..., None]
    feat_unit = F.normalize(feat, dim=1, eps=EPS)
    means_unit = F.normalize(means, dim=2, eps=EPS)
    pixel = torch.einsum("bchw,brc->brhw", feat_unit, means_unit)
    between = (means_unit[:, 0] * means_unit[:, 1]).sum(dim=1)
    return pixel, between, area > 0


class RegionAffinityLoss(nn.Module):
    """MSE between student and teacher region affinities (see :func:`region_affinity`).

    ``pixel_weight`` scales the pixel-to-region term (student and teacher maps average-pooled to the
    smaller of their sizes), ``region_weight`` the spleen-to-background term. No adapter is
    needed: the affinities do not depend on the channel count.

    Empty regions: an image contributes only if both spleen and background are present at both
    feature resolutions (with one region there is no difference between regions to transfer).
    If no image qualifies the loss is 0, still attached to the graph.
    """

    def __init__(self, pixel_weight: float = 1.0, region_weight: float = 1.0):
        super().__init__()
        self.pixel_weight = float(pixel_weight)
        self.region_weight = float(region_weight)

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        with full_precision(student_feat):
            s_pixel, s_between, s_present = region_affinity(student_feat.float(), label)
            t_pixel, t_between, t_present = region_affinity(teacher_feat.detach().float(), label)
            valid = (s_present & t_present).all(dim=1).to(s_pixel.dtype)
            count = valid.sum().clamp_min(1.0)
            size = common_size(s_pixel, t_pixel)
            pixel_err = (pool_to(s_pixel, size) - pool_to(t_pixel, size)).pow(2).mean(dim=(1, 2, 3))
            between_err = (s_between - t_between).pow(2)
            pixel = (pixel_err * valid).sum() / count
            between = (between_err * valid).sum() / count
            return self.pixel_weight * pixel + self.region_weight * between
