"""A handler for the DDP test: records which volumes each rank trained on, how many steps it took, a digest of
the trained parameters (student and distillation heads) and how many volumes validation scored."""

import hashlib
import json
import os
from pathlib import Path

from ignite.engine import Events


class SeenVolumes:
    def __init__(self, out_dir: str, modules=(), validator=None):
        self.out_dir = Path(out_dir)
        self.modules = list(modules)
        self.validator = validator
        self.seen: list[str] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _record(self, engine) -> None:
        image = engine.state.output["image"]
        names = image.meta["filename_or_obj"] if hasattr(image, "meta") else []
        self.seen.extend(names if isinstance(names, list) else [names])

    def _write(self, engine) -> None:
        rank = int(os.environ.get("RANK", 0))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        for module in self.modules:
            for name, tensor in module.state_dict().items():
                digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        details = getattr(getattr(self.validator, "state", None), "metric_details", {}) or {}
        scored = {name: len(values) for name, values in details.items()}
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(
            {"seen": self.seen, "iterations": engine.state.iteration, "epochs": engine.state.epoch,
             "parameters": digest.hexdigest(), "validation_scored": scored}))
