"""The bundle's workflows as the console commands run them: which config files make which workflow, the
runner (``monai.bundle.run`` in this process), resumable stages, and where training data comes from.

``python -m monai.bundle run`` with the config files is the MONAI interface and needs none of this;
``spleen-kd`` (:mod:`bundle.cli`) is the convenience around it, built on the same configs.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write_text


def bundle_root() -> Path:
    """The bundle's folder (``configs/``, ``models/``): the repository in a clone or an editable install; the
    installed package folder after a plain ``pip install .``, which carries both."""
    package = Path(__file__).resolve().parent
    repository = package.parent
    return repository if (repository / "configs" / "train.json").is_file() else package


def config_dir() -> Path:
    return bundle_root() / "configs"


def models_dir() -> Path:
    """The shipped weights: ``model.pt`` (the served student S1-fast), ``s1/``, ``teacher/``."""
    return bundle_root() / "models"


def shipped_checkpoints() -> list[Path]:
    """The shipped checkpoints, served student first: ``model.pt`` (S1-fast), ``s1/``, ``teacher/``."""
    return [models_dir() / "model.pt", models_dir() / "s1" / "model.pt", models_dir() / "teacher" / "model.pt"]


# workflow -> its config files; train.json is the base, the others are overrides merged on top of it
WORKFLOWS = {
    "student": ("train.json",),
    "teacher": ("train.json", "teacher.json"),
    "kd": ("train.json", "kd.json"),
    "teacher_3d": ("train.json", "teacher_3d.json"),
    "inference": ("inference.json",),
}
EVALUATION = {"teacher_3d": ("evaluate_3d.json",)}  # evaluate.json is for slice networks; 3D ones add this
STAGES = ("teacher", "student", "kd")  # the slice workflows (trained, evaluated), also their default run names
TRAINABLE = (*STAGES, "teacher_3d")  # and a 3D MONAI UNet teacher, written as a MONAI bundle folder


def located(name: str | Path) -> str:
    """A config by name in ``configs/`` (``"demo"``, ``"evaluate"``, ``"experiments/proof"``) or by path."""
    text = str(name)
    if Path(text).is_file():
        return str(Path(text).resolve())
    path = config_dir() / (text if text.endswith(".json") else f"{text}.json")
    if not path.is_file():
        known = sorted(p.stem for p in config_dir().glob("*.json"))
        raise FileNotFoundError(f"config '{name}' is neither a file nor one of configs/: {known}.")
    return str(path)


def config_files(workflow: str, *extra: str | Path, evaluate: bool = False) -> list[str]:
    """The absolute config files of ``workflow`` (a key of :data:`WORKFLOWS`), then ``evaluate.json`` (and
    the workflow's own evaluation override) if asked, then the ``extra`` overrides in order."""
    if workflow not in WORKFLOWS:
        raise ValueError(f"unknown workflow '{workflow}': one of {sorted(WORKFLOWS)}.")
    evaluation = ["evaluate", *EVALUATION.get(workflow, ())] if evaluate else []
    return [*(located(f) for f in WORKFLOWS[workflow]), *(located(f) for f in evaluation), *(located(f) for f in extra)]


def bundle_run(run_id: str, files: Sequence[str], **overrides) -> None:
    """One workflow in this process, as ``python -m monai.bundle run RUN_ID --config_file FILES --key value``
    runs it (``bundle_root`` defaults to the bundle's folder); memory is released afterwards so that a long
    sequence of runs does not grow."""
    import torch
    from monai.bundle import run

    try:
        run(run_id=run_id, config_file=list(files), meta_file=str(config_dir() / "metadata.json"),
            logging_file=str(config_dir() / "logging.conf"), **{"bundle_root": str(bundle_root()), **overrides})
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def parsed(files: Sequence[str], overrides: dict | None = None):
    """A ``ConfigParser`` of the merged files with ``overrides`` applied, as ``monai.bundle run`` sees them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update({"bundle_root": str(bundle_root()), **(overrides or {})})
    return parser


def network_definition(files: Sequence[str], workflow: str, overrides: dict | None = None) -> dict:
    """The network a training workflow trains: ``teacher_def`` for the teacher, ``student_def`` otherwise, its
    expressions evaluated (train.json's student takes the served model's ``stem_stride``)."""
    key = "teacher_def" if workflow == "teacher" else "student_def"
    definition = parsed(files, overrides).get_parsed_content(key, instantiate=False)
    return definition.get_config() if hasattr(definition, "get_config") else definition


@dataclass
class Stages:
    """Resumable steps: each leaves ``OUT/stages/<name>.json`` with its result; a rerun reuses it."""

    out: Path
    log: Callable[[str], None] = print

    def marker(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.json"

    def done(self, name: str) -> bool:
        return self.marker(name).is_file()

    def run(self, name: str, fn: Callable[[], dict | None]) -> dict:
        marker = self.marker(name)
        if marker.is_file():
            self.log(f"[{name}] already done ({marker}), reusing it")
            return json.loads(marker.read_text())
        self.log(f"[{name}] running ...")
        start = time.perf_counter()
        result = fn() or {}
        result["seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_text(marker, json.dumps(result, indent=2, default=str))
        self.log(f"[{name}] done in {result['seconds']} s")
        return result

    def forget(self, name: str) -> None:
        self.marker(name).unlink(missing_ok=True)


def training_data(out: Path, dataset_dir: str | Path | None = None, kind: str = "synthetic", cases: int = 16,
                  seed: int = 0, log: Callable[[str], None] = print, **case_options) -> tuple[str, str]:
    """``(dataset folder, a sentence saying what it is)``: ``dataset_dir`` if it holds a ``dataset.json``
    (e.g. MSD Task09_Spleen), else ``cases`` volumes of ``kind`` (``synthetic`` CT or ``phantoms``)
    generated once into ``OUT/<kind>``."""
    from .data.datalist import DataError

    if dataset_dir is not None and (Path(dataset_dir) / "dataset.json").is_file():
        folder = str(Path(dataset_dir).resolve())
        return folder, f"Data: the dataset at {folder}."
    folder = Path(out) / kind
    if kind == "synthetic":
        from .data.synthetic import make_synthetic_dataset

        if not (folder / "dataset.json").is_file():
            log(f"generating {cases} synthetic CT volumes (seed {seed}) in {folder} ...")
            make_synthetic_dataset(folder, cases=cases, seed=seed, **case_options)
        note = (f"Data: {cases} synthetic CT volumes (seed {seed}) generated from real label maps "
                f"(TotalSegmentator subjects s0001, s0004, s0006, spleens from 40 MSD masks) in {folder}.")
    elif kind == "phantoms":
        from .data.phantoms import make_phantom_dataset

        if not (folder / "dataset.json").is_file():
            make_phantom_dataset(folder, cases=cases, seed=seed)
        note = f"Data: {cases} procedural phantom volumes (seed {seed}) in {folder}."
    else:
        raise DataError(f"unknown training data kind '{kind}': 'synthetic' or 'phantoms'.")
    return str(folder), note
