"""Shared fixtures and helpers: the real CT fixtures (package data), a small phantom dataset, tiny networks,
and the bundle's workflows as lists of absolute config files (:func:`bundle.workflows.config_files`).

No workflow depends on the working directory: tests never chdir into the repository, they pass absolute
config files, ``bundle_root`` = the repository and ``output_root`` = a temporary folder. The repository
is on ``sys.path`` through pytest's ``pythonpath`` setting (configs in the tests name ``tests.geometry_probe``
and ``tests.ddp_probe``).
"""

import sys
from pathlib import Path

import pytest

from bundle.data.assets import FIXTURES
from bundle.workflows import bundle_root, config_dir
from bundle.workflows import bundle_run as _bundle_run
from bundle.workflows import config_files as _config_files

REPO = Path(__file__).resolve().parents[1]
CONFIGS = config_dir()
TEST_DATA = REPO / "tests" / "data"
assert bundle_root() == REPO, "the tests run against the repository's own configs"

META_FILE = str(CONFIGS / "metadata.json")
LOGGING_FILE = str(CONFIGS / "logging.conf")
TRAIN = str(CONFIGS / "train.json")
TINY_STUDENT = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "channels": [4, 8],
                "bottleneck": 8, "convs_per_block": 1}
TINY_TEACHER = {**TINY_STUDENT, "reconstruction": True}


def config_files(workflow: str, *extra: str, evaluate: bool = False) -> list[str]:
    """The absolute config files of ``workflow`` (and its evaluation configs if ``evaluate``) followed by
    ``extra`` overrides, each a config name in ``configs/`` (``"evaluate"``, ``"mlflow"``) or a path to a file."""
    return _config_files(workflow, *extra, evaluate=evaluate)


def bundle_run(run_id: str, files: str | list[str], **overrides) -> None:
    """``monai.bundle.run`` as a user runs it from anywhere: ``files`` a workflow name or a list of config
    files, ``bundle_root`` the repository (unless overridden), absolute metadata and logging files."""
    files = config_files(files) if isinstance(files, str) else [str(f) for f in files]
    _bundle_run(run_id, files, **overrides)


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
def totalseg_dir() -> Path:
    """Real CT scans with TotalSegmentator label maps (1 = spleen), NIfTI and a DICOM series (package data)."""
    return FIXTURES


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Eight small phantom volumes (64×64×24 at 5×5×10 mm) in the MSD layout; treat as read-only."""
    from bundle.data.phantoms import make_phantom_dataset

    out = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(out, cases=8, seed=0, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0))
    return out


S1_FAST = {"channels": [16, 32], "bottleneck": 64, "stem_stride": 2}
FITTED_SIZE = 64


@pytest.fixture(scope="session")
def real_slices():
    """Real CT slices (HU window, 64²) and their spleen masks: 30 slices with spleen in every one."""
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    volume = np.asarray(nib.load(FIXTURES / "example_ct_sm.nii.gz").dataobj, dtype=np.float32)
    slices = torch.from_numpy(np.clip((volume + 57) / 221, 0, 1)).permute(2, 0, 1)[:, None]
    labels = torch.from_numpy((np.asarray(nib.load(FIXTURES / "example_seg.nii.gz").dataobj) == 1)
                              .astype(np.float32)).permute(2, 0, 1)[:, None]
    size = (FITTED_SIZE, FITTED_SIZE)
    return F.interpolate(slices, size=size, mode="area"), (F.interpolate(labels, size=size, mode="area") > 0.5).float()


@pytest.fixture(scope="session")
def fitted_student(real_slices, tmp_path_factory):
    """S1-fast fitted for 40 steps on half of the real slices: confident, spleen-shaped masks (a random
    network's mask is all or nothing, which would make comparisons of serving paths trivial). Returns the
    network, its checkpoint (described for 64² slices: ``model.json``) and the ONNX export beside it."""
    import torch
    import torch.nn.functional as F

    from bundle.networks import FeatureUNet
    from bundle.serving import model_info
    from bundle.serving.backend import export_onnx

    images, labels = real_slices[0][::2], real_slices[1][::2]
    torch.manual_seed(0)
    network = FeatureUNet(**S1_FAST)
    optimizer = torch.optim.Adam(network.parameters(), 1e-2)
    for _ in range(40):
        logits = network(images)
        probs = torch.sigmoid(logits)
        dice = (2 * (probs * labels).sum() + 1) / (probs.sum() + labels.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, labels) + 1 - dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()
    path = tmp_path_factory.mktemp("fitted") / "model.pt"
    torch.save(network.state_dict(), path)
    model_info.write(path, network, slice_size=FITTED_SIZE)
    export_onnx(network, path.with_suffix(".onnx"), FITTED_SIZE)
    return network, path, path.with_suffix(".onnx")


@pytest.fixture(scope="session")
def unlabelled_setup(phantom_dir, tmp_path_factory):
    """A phantom split, a tiny saved teacher, and the teacher volumes copied without their labels."""
    import shutil

    import torch

    from bundle.data.datalist import load_or_create_datalist
    from bundle.networks import FeatureUNet

    root = tmp_path_factory.mktemp("unlabelled")
    datalist = load_or_create_datalist(str(phantom_dir), str(root / "datalist.json"))
    images = root / "images_only"
    images.mkdir()
    for pair in datalist["teacher_train"]:  # images copied without their labels
        shutil.copy(pair["image"], images / Path(pair["image"]).name)
    torch.save(FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True).state_dict(), root / "teacher.pt")
    common = dict(bundle_root=str(REPO), output_root=str(root), dataset_dir=str(phantom_dir),
                  datalist_file=str(root / "datalist.json"), slice_size=32, epochs=2, val_interval=1,
                  slices_per_volume=4, sw_batch_size=32, teacher_def=TINY_TEACHER, student_def=TINY_STUDENT, amp=False, teacher_ckpt=str(root / "teacher.pt"),
                  use_unlabeled=True, unlabeled_source=str(images))
    return root, datalist, images, common
