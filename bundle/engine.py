"""One Ignite trainer for teacher, baseline student and distillation.

The trainer runs the network with ``return_features=True`` (and the frozen teacher, when there
is one), then hands both output dicts and the batch to a :class:`CompositeLoss`: a config-declared
list of weighted :class:`LossTerm`. Each term names where its inputs come from
(``student.seg``, ``teacher.encoder``, ``batch.label`` ...), so a new loss is a new module plus a
config entry and this file never changes. Because it is a MONAI ``SupervisedTrainer``, MONAI's
handlers (validation, checkpoints, stats, TensorBoard, MLflow) plug in unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import hashlib

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

SOURCES = ("student", "teacher", "batch")


class LossTerm(nn.Module):
    """A weighted loss whose positional inputs are read from ``source.key`` addresses.

    ``warmup_epochs`` ramps the weight linearly from 0 over the first epochs (a distillation term then
    starts once the student has found the spleen). ``labeled_only`` hands the loss only the rows of the
    batch that carry a label (``batch.labeled``), so a segmentation term never sees an unlabelled slice
    while distillation terms use every slice.
    """

    def __init__(self, loss: nn.Module, inputs: Sequence[str], weight: float = 1.0, warmup_epochs: float = 0.0,
                 labeled_only: bool = False):
        super().__init__()
        for address in inputs:
            source, _, key = address.partition(".")
            if source not in SOURCES or not key:
                raise ValueError(
                    f"loss input '{address}' must look like 'student.seg', 'teacher.encoder' or 'batch.label' "
                    f"(source one of {SOURCES})."
                )
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.loss = loss
        self.inputs = tuple(inputs)
        self.weight = float(weight)
        self.warmup_epochs = float(warmup_epochs)
        self.labeled_only = bool(labeled_only)

    @property
    def needs_teacher(self) -> bool:
        return any(a.startswith("teacher.") for a in self.inputs)

    def weight_at(self, epochs_done: float) -> float:
        """The weight after ``epochs_done`` (fractional) epochs of training."""
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(1.0, max(0.0, epochs_done) / self.warmup_epochs)

    def forward(self, sources: Mapping[str, Mapping[str, torch.Tensor] | None]) -> torch.Tensor:
        args = []
        for address in self.inputs:
            source, _, key = address.partition(".")
            outputs = sources[source]
            if outputs is None:
                raise ValueError(f"loss input '{address}' needs a teacher, but the trainer has none: set `teacher`.")
            if key not in outputs:
                raise KeyError(f"loss input '{address}': the {source} provides only {sorted(outputs)}.")
            args.append(outputs[key])
        labeled = sources["batch"].get("labeled") if self.labeled_only else None
        if labeled is not None:
            rows = torch.as_tensor(labeled, device=args[0].device).reshape(-1).bool()
            if not rows.any():  # no labelled slice in this batch: a zero that keeps the graph
                return sum(a.sum() for a in args if a.requires_grad) * 0.0
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

    def forward(self, student, teacher, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sources = {"student": student, "teacher": teacher, "batch": batch}
        values = {name: term(sources) for name, term in self.terms.items()}
        weights = self.weights()
        total = sum(weights[name] * value for name, value in values.items())
        return total, {name: value.detach() for name, value in values.items()}


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


def freeze(network: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher's weights and BatchNorm statistics never change."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


class ComposedLossTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss is a :class:`CompositeLoss` over student (and teacher) outputs.

    ``engine.state.output`` holds ``loss`` (the weighted total) and ``loss_terms`` (each term, unweighted),
    and every term's running epoch mean is kept in ``engine.state.metrics`` as ``loss_<name>`` so the
    stats, TensorBoard and MLflow handlers log them all at the end of each epoch.
    """

    def __init__(self, *args, loss_function: CompositeLoss | nn.Module, teacher: nn.Module | None = None,
                 teacher_cache: TeacherCache | None = None, **kwargs):
        # under DDP the composite loss (it owns learned heads) is wrapped too; read its terms inside
        self.composite = getattr(loss_function, "module", loss_function)
        if self.composite.needs_teacher and teacher is None:
            raise ValueError("the configured loss terms read 'teacher.*' inputs, but no `teacher` was given.")
        self._refuse_unsupported(kwargs)
        super().__init__(*args, loss_function=loss_function, **kwargs)
        # in place, so the optimizer keeps the same head parameters
        self.composite.to(self.state.device)
        self.teacher = freeze(teacher.to(self.state.device)) if teacher is not None else None
        self.teacher_cache = teacher_cache
        self._term_sums: dict[str, float] = {}
        self._term_steps = 0
        self.add_event_handler(Events.EPOCH_STARTED, self._reset_term_means)

    # SupervisedTrainer options this trainer's `_iteration` does not implement, with their neutral values
    unsupported_options = {"accumulation_steps": 1, "compile": False, "inferer": None}

    @classmethod
    def _refuse_unsupported(cls, kwargs: Mapping) -> None:
        """Fail loudly rather than silently train differently from what the config asks for."""
        for name, neutral in cls.unsupported_options.items():
            value = kwargs.get(name, neutral)
            if value != neutral:
                raise ValueError(f"ComposedLossTrainer does not support `{name}={value!r}` (it runs the network "
                                 f"directly, one optimizer step per batch): remove `{name}` from the trainer config.")

    def _fp16_scaler(self):
        """The gradient scaler, when fp16 autocast needs it (bf16 and fp32 do not). Decided per step because
        MONAI creates ``self.scaler`` in ``run()``, after ``__init__``."""
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled() or self._autocast().fast_dtype != torch.float16:
            return None
        return scaler

    def _reset_term_means(self, _) -> None:
        self._term_sums.clear()
        self._term_steps = 0

    def _autocast(self):
        enabled = bool(self.amp) and self.state.device.type == "cuda"
        return torch.autocast(self.state.device.type, enabled=enabled, **(self.amp_kwargs or {}))

    def _iteration(self, engine, batchdata):
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        batch = {"image": inputs, "label": targets}
        if isinstance(batchdata, Mapping) and "labeled" in batchdata:
            batch["labeled"] = batchdata["labeled"]
        engine.composite.set_progress((engine.state.iteration - 1) / max(1, engine.state.epoch_length or 1))
        teacher_out = None
        if engine.teacher is not None:
            engine.teacher.eval()
            with torch.no_grad(), engine._autocast():
                if engine.teacher_cache is None:
                    teacher_out = engine.teacher(inputs, return_features=True)
                else:
                    teacher_out = engine.teacher_cache.outputs(engine.teacher, inputs, engine.composite.teacher_keys)

        engine.network.train()
        engine.loss_function.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast():
            student_out = engine.network(inputs, return_features=True)
            engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: student_out["seg"]}
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss, terms = engine.loss_function(student_out, teacher_out, batch)
        engine.state.output[Keys.LOSS] = loss
        engine.state.output["loss_terms"] = terms
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = engine._fp16_scaler()
        if scaler is not None:
            scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        # running epoch means, complete whenever EPOCH_COMPLETED handlers read them
        engine._term_steps += 1
        for name, value in terms.items():
            engine._term_sums[name] = engine._term_sums.get(name, 0.0) + float(value)
            engine.state.metrics[f"loss_{name}"] = engine._term_sums[name] / engine._term_steps
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def loss_logs(output: Mapping) -> dict[str, float]:
    """``output_transform`` for stats/TensorBoard/MLflow handlers: the total and every term per iteration."""
    logs = {"loss": float(output[Keys.LOSS])}
    logs.update({f"loss_{name}": float(v) for name, v in output.get("loss_terms", {}).items()})
    return logs


class LossProgressBar(ProgressBar):
    """Ignite's progress bar showing the total and every loss term (attachable from a config handler list).

    Like tqdm's ``disable=None`` it stays silent when stderr is not a terminal, so logs of batch
    jobs hold the per-epoch stats lines instead of thousands of bar redraws.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("disable", None)
        super().__init__(*args, **kwargs)

    def attach(self, engine, *args, **kwargs):
        kwargs.setdefault("output_transform", loss_logs)
        super().attach(engine, *args, **kwargs)
