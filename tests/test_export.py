"""TorchScript and ONNX exports of the student match the PyTorch logits on real CT slices."""

import tempfile

import nibabel as nib
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ckpt_export, onnx_export

from bundle.networks import FeatureUNet
from bundle.serving.backend import OnnxRuntimeNetwork
from conftest import META_FILE, config_files

STUDENTS = {"S1": {"channels": [16, 32], "bottleneck": 64},
            "S1-fast": {"channels": [16, 32], "bottleneck": 64, "stem_stride": 2}}


@pytest.fixture(scope="module")
def ct_slices(totalseg_dir):
    """Eight axial slices of the real CT, windowed to -57..164 HU and resized to 128²."""
    volume = np.asarray(nib.load(totalseg_dir / "example_ct_sm.nii.gz").dataobj, dtype=np.float32)
    windowed = np.clip((volume + 57) / 221, 0, 1)
    slices = torch.from_numpy(windowed[:, :, ::4][:, :, :8]).permute(2, 0, 1)[:, None]
    return F.interpolate(slices, size=(128, 128), mode="area")


def _checkpoint(tmp_path, kwargs):
    torch.manual_seed(0)
    network = FeatureUNet(**kwargs).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "model.pt"
    torch.save(network.state_dict(), path)
    return network, path


def _export_args(tmp_path, kwargs, ckpt):
    return dict(net_id="network_def", ckpt_file=str(ckpt), meta_file=META_FILE,
                config_file=config_files("inference"), input_shape=[1, 1, 128, 128],
                network_def={"_target_": "bundle.networks.FeatureUNet", **kwargs})


@pytest.mark.parametrize("name", list(STUDENTS))
def test_torchscript_export_matches(name, tmp_path, ct_slices, monkeypatch):
    monkeypatch.chdir(tmp_path)  # exports from any directory
    network, ckpt = _checkpoint(tmp_path, STUDENTS[name])
    ckpt_export(filepath=str(tmp_path / "model.ts"), use_trace=True, **_export_args(tmp_path, STUDENTS[name], ckpt))
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        assert (scripted(ct_slices) - network(ct_slices)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", list(STUDENTS))
def test_onnx_export_matches_for_any_batch(name, tmp_path, ct_slices, monkeypatch):
    monkeypatch.chdir(tmp_path)  # exports from any directory
    # MONAI's onnx_export goes through a NamedTemporaryFile, and the exporter writes the weights
    # beside it as <name>.data, which nobody deletes: keep that in the test's folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    network, ckpt = _checkpoint(tmp_path, STUDENTS[name])
    onnx_export(filepath=str(tmp_path / "model.onnx"), **_export_args(tmp_path, STUDENTS[name], ckpt),
                converter_kwargs={"dynamic_axes": {"x": {0: "batch"}}, "input_names": ["x"]})
    session = OnnxRuntimeNetwork(tmp_path / "model.onnx")
    assert isinstance(session.model.session, ort.InferenceSession)
    with torch.no_grad():
        for batch in (ct_slices, ct_slices[:3], ct_slices[:1]):
            assert (session(batch) - network(batch)).abs().max().item() <= 1e-4


def test_missing_onnx_model_says_how_to_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.onnx.*spleen-kd export"):
        OnnxRuntimeNetwork(tmp_path / "absent.onnx")
