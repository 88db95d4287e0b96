"""Random streams that do not depend on what else a workflow builds.

A fair comparison of a baseline student and a distilled one needs the same initial weights and the
same slices in the same order. Building the teacher or the distillation heads draws from the global
random generator, so anything that still drew from it afterwards would shift between the arms. The
student's weights are therefore drawn from a generator seeded by the run's seed alone, and the
training DataLoader gets a generator of its own (``torch.Generator().manual_seed(seed)``), which
MONAI's DataLoader also uses to seed the random transforms.
"""

from __future__ import annotations

import torch
from torch import nn


def seeded_init(network: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every submodule that has ``reset_parameters`` from ``seed``, leaving the global
    random state as it was. The weights then depend on the seed and the architecture only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for module in network.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return network
