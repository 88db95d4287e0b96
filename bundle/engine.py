"""One Ignite trainer for teacher, baseline student and distillation.

The trainer runs the network with ``return_features=True`` (and the frozen teacher, when there
is one), then hands both output dicts and the batch to a :class:`~bundle.losses.composite.CompositeLoss`:
config-declared weighted terms that read their inputs by address (``network.seg``, ``teacher.encoder``,
``batch.label`` ...), so a new loss never changes this file. Because it is a MONAI ``SupervisedTrainer``,
MONAI's handlers (validation, checkpoints, stats, TensorBoard, MLflow) plug in unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from .losses.composite import CompositeLoss
from .teacher import TeacherCache, freeze


class ComposedLossTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss is a :class:`CompositeLoss` over the network's (and teacher's) outputs.

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
        self._refuse_missing_outputs(teacher)
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

    def _refuse_missing_outputs(self, teacher: nn.Module | None) -> None:
        """A teacher adapter (:mod:`bundle.teacher`) says what it gives; a term reading anything else
        is refused now, not at the first step."""
        provides = getattr(teacher, "provides", None)
        if provides is None:
            return
        for name, term in self.composite.terms.items():
            read = [address.partition(".")[2] for address in term.inputs if address.startswith("teacher.")]
            missing = sorted(key for key in read if key not in provides)
            if missing:
                raise ValueError(f"loss term '{name}' reads teacher output(s) {missing}, but the {type(teacher).__name__} "
                                 f"gives only {sorted(provides)}. Map them to module names in the adapter's `features` "
                                 "(2D teachers), or distil with logit terms only (`--distill \"['dist']\"`).")

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
                if getattr(engine.teacher, "precomputed", None):
                    teacher_out = _precomputed(engine.teacher.precomputed, batchdata, inputs)
                elif engine.teacher_cache is None:
                    teacher_out = engine.teacher(inputs, return_features=True)
                else:
                    teacher_out = engine.teacher_cache.outputs(engine.teacher, inputs, engine.composite.teacher_keys)

        engine.network.train()
        engine.loss_function.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast():
            network_out = engine.network(inputs, return_features=True)
            engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: network_out["seg"]}
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss, terms = engine.loss_function(network_out, teacher_out, batch)
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


def _precomputed(keys: Mapping[str, str], batchdata: Mapping, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher outputs the data pipeline computed (a volume teacher's slice travels with the student's)."""
    missing = [key for key in keys.values() if key not in batchdata]
    if missing:
        raise ValueError(f"the batch has no {missing}: the teacher's outputs are computed per volume in the data "
                         "pipeline; add bundle.teacher.TeacherLogitsd to the training transforms and list its key "
                         "in `slice_keys` (configs/teacher_bundle.json does both).")
    return {name: torch.as_tensor(batchdata[key]).to(inputs.device, inputs.dtype) for name, key in keys.items()}


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
