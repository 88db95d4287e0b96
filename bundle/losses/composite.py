"""A training loss declared as data: named, weighted terms whose inputs are addresses.

Each :class:`LossTerm` names where its inputs come from (``network.seg``, ``teacher.encoder``,
``batch.label`` ...): ``network`` is the network being trained (the teacher itself when training a
teacher, the student when distilling), ``teacher`` the frozen teacher, ``batch`` the image, label and
``labeled`` flags. A new loss is then a new module plus a config entry; no trainer code changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

SOURCES = ("network", "teacher", "batch")


class LossTerm(nn.Module):
    """A weighted loss whose positional inputs are read from ``source.key`` addresses.

    Every floating input reaches the loss as float32 and every ``teacher.*`` input detached, so no loss
    has to guard against AMP half precision or send a gradient into the teacher on its own.
    ``warmup_epochs`` ramps the weight linearly from 0 over the first epochs (a distillation term then
    starts once the student has found the spleen). ``labeled_only`` hands the loss only the rows of the
    batch that carry a label (``batch.labeled``), so a segmentation term never sees an unlabelled slice
    while distillation terms use every slice; ``unlabeled_only`` only the others (pseudo-labels, which
    stand in for the label where there is none).
    """

    def __init__(self, loss: nn.Module, inputs: Sequence[str], weight: float = 1.0, warmup_epochs: float = 0.0,
                 labeled_only: bool = False, unlabeled_only: bool = False):
        super().__init__()
        for address in inputs:
            source, _, key = address.partition(".")
            if source not in SOURCES or not key:
                raise ValueError(
                    f"loss input '{address}' must look like 'network.seg', 'teacher.encoder' or 'batch.label' "
                    f"(source one of {SOURCES})."
                )
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        if labeled_only and unlabeled_only:
            raise ValueError("a loss term can be labeled_only or unlabeled_only, not both.")
        self.loss = loss
        self.inputs = tuple(inputs)
        self.weight = float(weight)
        self.warmup_epochs = float(warmup_epochs)
        self.labeled_only = bool(labeled_only)
        self.unlabeled_only = bool(unlabeled_only)

    @property
    def needs_teacher(self) -> bool:
        return any(a.startswith("teacher.") for a in self.inputs)

    def weight_at(self, epochs_done: float) -> float:
        """The weight after ``epochs_done`` (fractional) epochs of training."""
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(1.0, max(0.0, epochs_done) / self.warmup_epochs)

    @staticmethod
    def _read(address: str, sources: Mapping[str, Mapping[str, torch.Tensor] | None]) -> torch.Tensor:
        source, _, key = address.partition(".")
        outputs = sources[source]
        if outputs is None:
            raise ValueError(f"loss input '{address}' needs a teacher, but the trainer has none: set `teacher`.")
        if key not in outputs:
            raise KeyError(f"loss input '{address}': the {source} provides only {sorted(outputs)}.")
        value = outputs[key]
        if value.is_floating_point():
            value = value.float()
        return value.detach() if source == "teacher" else value

    def forward(self, sources: Mapping[str, Mapping[str, torch.Tensor] | None]) -> torch.Tensor:
        args = [self._read(address, sources) for address in self.inputs]
        labeled = sources["batch"].get("labeled")
        if self.unlabeled_only or (self.labeled_only and labeled is not None):
            if labeled is None:  # no unlabelled volumes in this run: every slice carries a label
                labeled = torch.ones(args[0].shape[0])
            rows = torch.as_tensor(labeled, device=args[0].device).reshape(-1).bool()
            rows = ~rows if self.unlabeled_only else rows
            if not rows.any():  # no such slice in this batch: a zero that keeps the graph
                return args[0].new_zeros((), dtype=torch.float32) + sum(a.sum() * 0.0 for a in args if a.requires_grad)
            args = [a[rows] for a in args]
        return self.loss(*args)


class CompositeLoss(nn.Module):
    """Named, weighted sum of :class:`LossTerm`; holds the terms' learned heads so they are optimised
    and saved with the run (``parameters()``/``state_dict()``). The trainer reports training progress
    with :meth:`set_progress`, which the terms' warm-ups follow."""

    def __init__(self, terms: Mapping[str, LossTerm]):
        super().__init__()
        if not terms:
            raise ValueError("CompositeLoss needs at least one loss term.")
        self.terms = nn.ModuleDict(terms)
        self.epochs_done = 0.0

    @property
    def needs_teacher(self) -> bool:
        return any(term.needs_teacher for term in self.terms.values())

    @property
    def teacher_keys(self) -> set[str]:
        """The teacher outputs the terms read: only these are cached."""
        return {a.partition(".")[2] for term in self.terms.values() for a in term.inputs if a.startswith("teacher.")}

    def set_progress(self, epochs_done: float) -> None:
        self.epochs_done = float(epochs_done)

    def weights(self) -> dict[str, float]:
        """Every term's weight now (after its warm-up)."""
        return {name: term.weight_at(self.epochs_done) for name, term in self.terms.items()}

    def forward(self, network_out, teacher_out, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sources = {"network": network_out, "teacher": teacher_out, "batch": batch}
        values = {name: term(sources) for name, term in self.terms.items()}
        weights = self.weights()
        total = sum(weights[name] * value for name, value in values.items())
        return total, {name: value.detach() for name, value in values.items()}


def select_terms(terms: Mapping[str, LossTerm], names: Sequence[str], key: str = "distill") -> dict[str, LossTerm]:
    """The terms a config names (``--distill "['pmd','cwd']"``), in that order; an unknown name is refused
    with the names there are, instead of a KeyError deep inside config parsing."""
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in terms]
    if unknown:
        raise ValueError(f"`{key}` names {unknown}, which are not in `loss_terms`; choose from {sorted(terms)}.")
    return {name: terms[name] for name in names}
