"""A segmenter that is perfect by construction, for testing geometry: on images whose windowed intensity is
the spleen's occupancy (0 outside, 1 inside, fractions at resampled edges), its probability is the intensity.
Whatever Dice the workflows give it is the ceiling that their resampling and orientation handling allow."""

import torch
from torch import nn


class IntensityAsProbability(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))  # a parameter so the workflows can load and count it

    def forward(self, x: torch.Tensor, return_features: bool = False):
        p = x.clamp(1e-4, 1 - 1e-4)
        logits = self.scale * (torch.log(p) - torch.log1p(-p))
        return {"seg": logits} if return_features else logits
