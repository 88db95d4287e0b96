"""Shared fixtures and helpers: the real CT fixtures beside the repository, a small phantom dataset, tiny
networks, and the bundle's workflows as lists of absolute config files.

No workflow depends on the working directory: tests never chdir into the repository, they pass absolute
config files, ``bundle_root`` = the repository and ``output_root`` = a temporary folder.
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
if str(REPO) not in sys.path:  # configs in the tests name ``tests.geometry_probe`` and ``tests.ddp_probe``
    sys.path.insert(0, str(REPO))

META_FILE = str(CONFIGS / "metadata.json")
LOGGING_FILE = str(CONFIGS / "logging.conf")
TRAIN = str(CONFIGS / "train.json")
# workflow -> the config files merged for it (train.json is the base, the others are overrides on top)
WORKFLOWS = {
    "student": [TRAIN],
    "teacher": [TRAIN, str(CONFIGS / "teacher.json")],
    "kd": [TRAIN, str(CONFIGS / "kd.json")],
    "inference": [str(CONFIGS / "inference.json")],
}
TINY_STUDENT = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "channels": [4, 8],
                "bottleneck": 8, "convs_per_block": 1}
TINY_TEACHER = {**TINY_STUDENT, "reconstruction": True}


def config_files(workflow: str, *extra: str) -> list[str]:
    """The absolute config files of ``workflow`` (a key of WORKFLOWS) followed by ``extra`` overrides, each a
    config name in ``configs/`` (``"evaluate"``, ``"multi_gpu_train"``, ``"mlflow"``) or a path to a file."""
    def located(name) -> str:
        return str(name) if str(name).endswith(".json") else str(CONFIGS / f"{name}.json")

    return [*WORKFLOWS[workflow], *(located(name) for name in extra)]


def bundle_run(run_id: str, files: str | list[str], **overrides) -> None:
    """``monai.bundle.run`` as a user runs it from anywhere: ``files`` a workflow name or a list of config
    files, ``bundle_root`` the repository (unless overridden), absolute metadata and logging files."""
    from monai.bundle import run

    files = config_files(files) if isinstance(files, str) else [str(f) for f in files]
    run(run_id=run_id, config_file=files, meta_file=META_FILE, logging_file=LOGGING_FILE,
        **{"bundle_root": str(REPO), **overrides})


def bundle_cli(run_id: str, files: list[str], **overrides) -> list[str]:
    """The ``python -m monai.bundle run`` command line of the same run (values as Fire parses them)."""
    command = [sys.executable, "-m", "monai.bundle", "run", run_id,
               "--config_file", "[" + ",".join(repr(str(f)) for f in files) + "]",
               "--meta_file", META_FILE, "--logging_file", LOGGING_FILE]
    for key, value in {"bundle_root": str(REPO), **overrides}.items():
        command += [f"--{key}", value if isinstance(value, str) else str(value) if isinstance(value, Path)
                    else repr(value)]
    return command


def error_chain(error: BaseException) -> str:
    """Every message of an exception and its causes (MONAI wraps errors raised inside config expressions)."""
    chain, cause = [], error
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return "\n".join(chain)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo>/../shared``, which holds the real CT fixtures (data/totalseg_ct) and the schemas."""
    path = REPO.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"the shared folder beside the repository ({path}) is absent: no real CT fixtures here")
    return path


@pytest.fixture(scope="session")
def totalseg_dir(shared_dir) -> Path:
    """Real CT scans with TotalSegmentator label maps (1 = spleen), NIfTI and a DICOM series."""
    path = shared_dir / "data" / "totalseg_ct"
    if not path.is_dir():
        pytest.skip(f"the real CT fixtures are not at {path}")
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Eight small phantom volumes (64×64×24 at 5×5×10 mm) in the MSD layout; treat as read-only."""
    from bundle.data.phantoms import make_phantom_dataset

    out = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(out, cases=8, seed=0, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0))
    return out
