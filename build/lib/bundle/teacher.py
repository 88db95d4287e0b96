"""The frozen teacher of a distillation run: freezing it, and caching its outputs across epochs."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def freeze(network: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher's weights and BatchNorm statistics never change."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


class TeacherCache:
    """Memory-bounded store of a frozen teacher's per-slice outputs, keyed by the slice's content.

    Without augmentation the same slices come back every epoch and the frozen teacher (eval mode,
    so per-sample BatchNorm) gives the same outputs, so they are computed once. Keys are hashes of the
    input bytes: an augmented or otherwise new slice simply misses, it can never get a stale answer.
    Entries stop being added once ``max_megabytes`` is reached; ``dtype`` (e.g. ``float16``) halves it.
    """

    def __init__(self, max_megabytes: float = 1024, dtype: torch.dtype | None = None):
        self.max_bytes = int(max_megabytes * 2**20)
        self.dtype = dtype
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[bytes, dict[str, torch.Tensor]] = {}

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        data = image.detach().cpu().contiguous()
        digest = hashlib.blake2b(str(tuple(data.shape)).encode(), digest_size=16)
        digest.update(data.numpy().tobytes())
        return digest.digest()

    def __len__(self) -> int:
        return len(self._entries)

    def outputs(self, teacher: nn.Module, inputs: torch.Tensor, keys: set[str]) -> dict[str, torch.Tensor]:
        """Teacher outputs for a batch: cached slices are gathered, the others computed and stored."""
        slice_keys = [self.key(x) for x in inputs]
        first_rows: dict[bytes, int] = {}  # each uncached slice once, however often the batch repeats it
        for row, key in enumerate(slice_keys):
            if key not in self._entries and key not in first_rows:
                first_rows[key] = row
        self.misses += len(first_rows)
        self.hits += len(slice_keys) - len(first_rows)
        fresh: dict[bytes, dict[str, torch.Tensor]] = {}
        if first_rows:
            computed = teacher(inputs[list(first_rows.values())], return_features=True)
            for position, key in enumerate(first_rows):
                fresh[key] = {name: computed[name][position] for name in keys}
                self._store(key, fresh[key])
        found = [fresh[key] if key in fresh else self._entries[key] for key in slice_keys]
        return {name: torch.stack([entry[name].to(inputs.device, inputs.dtype) for entry in found]) for name in keys}

    def _store(self, key: bytes, entry: dict[str, torch.Tensor]) -> None:
        # a copy of the row: a view would keep the whole batch's tensor alive (on CPU `.to` does not copy)
        stored = {k: v.detach().to("cpu", self.dtype or v.dtype, copy=True) for k, v in entry.items()}
        size = sum(v.untyped_storage().nbytes() for v in stored.values())
        if self.bytes + size <= self.max_bytes:
            self._entries[key] = stored
            self.bytes += size
