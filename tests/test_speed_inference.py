"""The fast CPU path of configs/inference.json gives what the plain MONAI path gives, on real CT."""

import gzip
import importlib.util
import json
import logging
import subprocess
import sys
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import KeepLargestConnectedComponentd
from nibabel.openers import ImageOpener

from bundle import arrays
from bundle.networks import FeatureUNet
from bundle.serving.backend import (AxialSliceInferer, OnnxRuntimeNetwork, load_student, resolve_backend,
                                    weights_key)
from bundle.serving.runtime import use_fast_gzip
from bundle.transforms import LargestComponentd

BACKEND_LOG = "bundle.serving.backend"

from conftest import FITTED_SIZE as SIZE
from conftest import S1_FAST


@pytest.fixture(scope="module")
def ct(real_slices):
    return real_slices


@pytest.fixture(scope="module")
def trained(fitted_student):
    return fitted_student[:2]


def _dice(a, b):
    a, b = a.bool(), b.bool()
    return (2 * (a & b).sum() / (a.sum() + b.sum())).item()


def _loaded(structure: dict, ckpt) -> FeatureUNet:
    return load_student(FeatureUNet(**structure), ckpt)


def test_auto_backend_is_onnx_runtime_on_cpu_and_is_logged(trained, ct, tmp_path, caplog):
    network, ckpt = trained
    assert resolve_backend("auto", "cpu") == "onnx"
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="backend 'tensorrt'.*--backend"):
        resolve_backend("tensorrt")
    volume = ct[0][:, 0].permute(1, 2, 0)[None, None]
    inferer = AxialSliceInferer(batch_size=8, backend="auto", onnx_path=tmp_path / "model.onnx")
    loaded = _loaded(S1_FAST, ckpt)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger=BACKEND_LOG):
        served = inferer.served(loaded, (SIZE, SIZE))
        logits = inferer(volume, loaded)
    assert isinstance(served, OnnxRuntimeNetwork) and (tmp_path / "model.onnx").is_file()
    assert "inference backend: onnxruntime" in caplog.text and "requested: auto" in caplog.text
    if sys.platform.startswith("linux"):  # the process is set up where MONAI Label builds the network
        assert "freed memory kept" in caplog.text
    assert ("gzip through ISA-L" if importlib.util.find_spec("isal") else "gzip through zlib") in caplog.text
    with torch.no_grad():
        assert (served(ct[0]) - network(ct[0])).abs().max().item() <= 1e-4
        assert (logits - AxialSliceInferer(backend="torch")(volume, network)).abs().max().item() <= 1e-4
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=BACKEND_LOG):
        assert AxialSliceInferer(backend="torch").served(loaded, (SIZE, SIZE)) is loaded
    assert "inference backend: torch" in caplog.text


def test_onnx_model_is_exported_once_and_again_when_the_weights_or_network_change(trained, ct, tmp_path):
    """The ONNX file on disk outlives the process: a later inferer (a later command) reuses it while it
    comes from the same weights, structure and slice size (one key, :func:`weights_key`)."""
    network, ckpt = trained
    onnx_path = tmp_path / "model.onnx"
    AxialSliceInferer(onnx_path=onnx_path).served(_loaded(S1_FAST, ckpt), (SIZE, SIZE))
    first = onnx_path.stat().st_mtime_ns
    served = AxialSliceInferer(onnx_path=onnx_path).served(_loaded(S1_FAST, ckpt), (SIZE, SIZE))
    assert onnx_path.stat().st_mtime_ns == first, "an up-to-date ONNX model must be reused"
    assert served.metadata["spleen_kd_source"] == weights_key(_loaded(S1_FAST, ckpt), SIZE)

    retrained = FeatureUNet(**S1_FAST)
    torch.manual_seed(1)
    retrained.load_state_dict({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                               for k, v in network.state_dict().items()})
    retrained.eval()
    served = AxialSliceInferer(onnx_path=onnx_path).served(retrained, (SIZE, SIZE))
    assert onnx_path.stat().st_mtime_ns != first
    with torch.no_grad():
        assert (served(ct[0]) - retrained(ct[0])).abs().max().item() <= 1e-4

    # S1 and S1-fast have the same parameter shapes: the same weights must not reuse S1-fast's graph
    plain = _loaded({"channels": [16, 32], "bottleneck": 64}, ckpt)
    served = AxialSliceInferer(onnx_path=onnx_path).served(plain, (SIZE, SIZE))
    with torch.no_grad():
        assert (served(ct[0]) - plain(ct[0])).abs().max().item() <= 1e-4
    assert weights_key(plain, SIZE) != weights_key(plain, 2 * SIZE)  # another slice size: another graph


def test_missing_checkpoint_names_the_file_and_an_onnx_model_alone_is_served(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_student(FeatureUNet(**S1_FAST), tmp_path / "absent.pt", onnx_path=tmp_path / "absent.onnx")
    onnx_path = tmp_path / "only.onnx"
    AxialSliceInferer(onnx_path=onnx_path).served(_loaded(S1_FAST, trained[1]), (SIZE, SIZE))
    assert isinstance(load_student(FeatureUNet(**S1_FAST), tmp_path / "absent.pt", onnx_path=onnx_path),
                      OnnxRuntimeNetwork)


def test_axial_slice_inferer_gives_what_slice_inferer_gives(trained, ct):
    network = trained[0]
    volume = MetaTensor(ct[0][:, 0].permute(1, 2, 0)[None, None], affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    with torch.no_grad():
        expected = SliceInferer(roi_size=(SIZE, SIZE), spatial_dim=2, sw_batch_size=7, progress=False)(volume, network)
        fast = AxialSliceInferer(batch_size=7, backend="torch")(volume, network)
    assert fast.shape == expected.shape == (1, 1, SIZE, SIZE, 30)
    assert (fast - expected).abs().max().item() <= 1e-5
    assert isinstance(fast, MetaTensor) and torch.equal(fast.affine, volume.affine)


def test_axial_slice_inferer_runs_a_torch_network_through_onnx_runtime_once_per_weights(trained, ct, caplog):
    """What MONAI Label hands the inferer: network_def with the checkpoint loaded, in eval mode. ``auto``
    exports it to ONNX Runtime once, again when the weights change; never in training mode."""
    network = FeatureUNet(**S1_FAST)
    network.load_state_dict(trained[0].state_dict())
    network.eval()
    volume = ct[0][:, 0].permute(1, 2, 0)[None, None]
    inferer = AxialSliceInferer(batch_size=8)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger=BACKEND_LOG):
        expected = AxialSliceInferer(batch_size=8, backend="torch")(volume, network)
        first = inferer(volume, network)
        session = inferer.served(network, (SIZE, SIZE))
        again = inferer(volume, network)
    assert isinstance(session, OnnxRuntimeNetwork) and inferer.served(network, (SIZE, SIZE)) is session
    assert "exported from the PyTorch network" in caplog.text
    assert (first - expected).abs().max().item() <= 1e-4 and torch.equal(first, again)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(1.1)
        changed = inferer(volume, network)
        assert inferer.served(network, (SIZE, SIZE)) is not session
        assert (changed - AxialSliceInferer(backend="torch")(volume, network)).abs().max().item() <= 1e-4
        assert (changed - first).abs().max().item() > 1e-2
    network.train()
    assert inferer.served(network, (SIZE, SIZE)) is network
    with pytest.raises(ValueError, match="backend 'tensorrt'"):
        AxialSliceInferer(backend="tensorrt")


@pytest.mark.parametrize("fast", [True, False], ids=["cc3d", "scipy"])
def test_largest_component_is_monais_largest_component(totalseg_dir, fast, monkeypatch):
    if fast:
        pytest.importorskip("cc3d")
    else:  # the fallback without cc3d
        monkeypatch.setattr("bundle.arrays.label_components", partial(arrays.label_components, fast=False))
    labels = np.asarray(nib.load(totalseg_dir / "example_seg.nii.gz").dataobj)
    rng = np.random.default_rng(0)
    masks = [np.zeros((8, 8, 8), bool),
             labels > 0,  # every organ of a real label map: many components, one body-sized
             np.isin(labels, [1, 5]),  # spleen and liver
             rng.random((40, 30, 20)) > 0.7]  # speckle: hundreds of components, diagonal contacts
    for mask in masks:
        affine = torch.diag(torch.tensor([0.8, 0.7, 3.0, 1.0], dtype=torch.float64))
        data = {"pred": MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), affine=affine)}
        given = data["pred"].clone()
        expected = KeepLargestConnectedComponentd(keys="pred", applied_labels=[1])({"pred": data["pred"].clone()})["pred"]
        fast = LargestComponentd(keys="pred")(data)["pred"]
        assert isinstance(fast, MetaTensor) and fast.dtype == expected.dtype
        assert torch.equal(fast.as_tensor(), expected.as_tensor()) and torch.equal(fast.affine, affine)
        assert torch.equal(data["pred"].as_tensor(), given.as_tensor())  # the input is not modified
    assert 0 < expected.sum() < masks[-1].sum()  # the speckle mask did lose its small components


def test_resized_is_monais_resized_forward_and_inverse(totalseg_dir):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from monai.transforms import Resized as MonaiResized, ScaleIntensityRanged

    from bundle.transforms import Resized

    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                    ScaleIntensityRanged("image", -57, 164, 0.0, 1.0, clip=True)])
    data = load({"image": str(totalseg_dir / "example_ct.nii.gz")})  # 122×101×112
    for kwargs in ({"mode": "trilinear", "anti_aliasing": True}, {"mode": "trilinear", "anti_aliasing": True,
                                                                 "anti_aliasing_sigma": 0.8},
                   {"mode": "trilinear"}, {"mode": "trilinear", "align_corners": True, "anti_aliasing": True},
                   {"mode": "area"}, {"mode": "nearest-exact"}):
        for size in ([48, 40, -1], [48, 200, 50], [122, 101, 112]):  # downsampling in-plane; mixed; unchanged
            monai_resized, fast_resized = MonaiResized("image", size, **kwargs), Resized("image", size, **kwargs)
            expected, fast = monai_resized(dict(data)), fast_resized(dict(data))
            assert fast["image"].shape == expected["image"].shape and fast["image"].dtype == expected["image"].dtype
            assert (fast["image"] - expected["image"]).abs().max().item() <= 1e-5, (kwargs, size)
            assert torch.allclose(fast["image"].affine, expected["image"].affine)
            for field in ("orig_size", "extra_info"):
                assert fast["image"].applied_operations[-1][field] == expected["image"].applied_operations[-1][field]
            inverted, expected_inverse = fast_resized.inverse(fast), monai_resized.inverse(expected)
            assert inverted["image"].shape == data["image"].shape
            assert (inverted["image"] - expected_inverse["image"]).abs().max().item() <= 1e-5, (kwargs, size)
            assert torch.allclose(inverted["image"].affine, data["image"].affine)
            assert inverted["image"].applied_operations == data["image"].applied_operations


def test_fast_gzip_reads_and_writes_the_images_nibabel_does(totalseg_dir, tmp_path, monkeypatch):
    pytest.importorskip("isal")
    ct_path = totalseg_dir / "example_ct_sm.nii.gz"
    plain = np.asarray(nib.load(ct_path).dataobj)
    monkeypatch.setitem(ImageOpener.compress_ext_map, ".gz", ImageOpener.compress_ext_map[".gz"])
    assert use_fast_gzip()
    assert ImageOpener.compress_ext_map[".gz"][0].__module__ == "bundle.serving.runtime"
    image = nib.load(ct_path)
    assert np.array_equal(np.asarray(image.dataobj), plain)
    mask = nib.Nifti1Image((plain > 100).astype(np.uint8), image.affine)
    nib.save(mask, tmp_path / "a.nii.gz")
    nib.save(mask, tmp_path / "b.nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes(), "writes must be deterministic"
    with gzip.open(tmp_path / "a.nii.gz") as stream:  # the standard library reads what ISA-L wrote
        assert np.array_equal(np.asarray(nib.Nifti1Image.from_bytes(stream.read()).dataobj), plain > 100)


def test_inference_imports_no_training_stack(tmp_path):
    """The bundle's own training code (engine, handlers, losses, MLflow wrapper) is not imported to serve."""
    code = ("import sys, bundle; bundle.serving.backend; bundle.transforms; bundle.io; bundle.networks; bundle.checkpoint; "
            "served = sorted(m for m in sys.modules if m.split('.')[0] == 'bundle'); "
            "bundle.data.datalist.load_or_create_datalist; bundle.data.slicing.WithUnlabeled; "
            "print(served, 'bundle.data.slicing' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.strip()
    loaded, data_loaded = out.rsplit(" ", 1)
    for module in ("bundle.engine", "bundle.handlers", "bundle.losses", "bundle.teacher", "bundle.tracking", "bundle.report"):
        assert module not in eval(loaded), f"{module} imported by the inference path: {loaded}"
    assert data_loaded == "True", "bundle.data.<module> must still resolve in the training configs' expressions"


def test_int8_model_segments_like_fp32(trained, ct, totalseg_dir, tmp_path, caplog):
    """Static int8 calibrated on another real CT: Dice against the fp32 mask >= 0.99 on the spleen CT."""
    from bundle.serving.quantize import calibration_slices, quantize_int8

    network, ckpt = trained
    fp32 = AxialSliceInferer(onnx_path=tmp_path / "model.onnx").served(_loaded(S1_FAST, ckpt), (SIZE, SIZE))
    slices = calibration_slices([totalseg_dir / "example_ct.nii.gz"], slice_size=SIZE, max_slices=32)
    assert slices.shape == (32, 1, SIZE, SIZE) and 0.0 <= slices.min() and slices.max() <= 1.0
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", slices)
    with caplog.at_level(logging.INFO, logger=BACKEND_LOG):
        int8 = AxialSliceInferer(onnx_path=tmp_path / "model.int8.onnx").served(_loaded(S1_FAST, ckpt), (SIZE, SIZE))
    assert int8.precision == "int8" and "(int8)" in caplog.text
    assert any(node.op_type == "QuantizeLinear" for node in __import__("onnx").load(str(int8.path)).graph.node)
    with torch.no_grad():
        reference, quantized = fp32(ct[0]) > 0, int8(ct[0]) > 0
    assert 0.005 < reference.float().mean().item() < 0.2, "the fp32 mask must be a real segmentation"
    assert _dice(reference, ct[1]) > 0.7
    assert _dice(quantized, reference) >= 0.99

    torch.save({k: v * 1.01 if v.is_floating_point() else v for k, v in network.state_dict().items()}, ckpt.parent / "other.pt")
    with pytest.raises(ValueError, match="int8 ONNX model .* other weights.*quantize again"):
        AxialSliceInferer(onnx_path=tmp_path / "model.int8.onnx").served(_loaded(S1_FAST, ckpt.parent / "other.pt"),
                                                                        (SIZE, SIZE))


def test_inference_config_serves_on_onnx_runtime_by_default(trained, tmp_path, request, caplog):
    """What a user and MONAI Label get from configs/inference.json without flags: ONNX Runtime on a CPU."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(request.config.rootpath / "configs" / "inference.json"))
    parser.update({"ckpt_path": str(trained[1]), "onnx_path": str(tmp_path / "model.onnx"), "device": "$torch.device('cpu')",
                   "network_def": {"_target_": "bundle.networks.FeatureUNet", **S1_FAST}, "slice_size": SIZE})
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    assert isinstance(inferer, AxialSliceInferer) and inferer.backend == "auto"
    with caplog.at_level(logging.INFO, logger=BACKEND_LOG):
        served = inferer.served(network, (SIZE, SIZE))
    assert isinstance(served, OnnxRuntimeNetwork) and (tmp_path / "model.onnx").is_file()
    assert "inference backend: onnxruntime" in caplog.text


def test_inference_of_several_volumes_with_a_reading_worker_writes_the_same_masks(trained, totalseg_dir, tmp_path,
                                                                                   request):
    """Two volumes (the real NIfTI and the DICOM series): with ``--num_workers 1`` (off by default: on 2 cores
    the reading worker slowed a list of volumes down) the masks are those read in the main process. Each run is
    the command a user types, in a fresh process: the worker is forked, and a fork of this test process, which
    has already read DICOM with ITK, would wait forever on ITK's thread pool."""
    inputs = [str(totalseg_dir / "example_ct_sm.nii.gz"), str(totalseg_dir / "example_ct_dicom")]
    network_def = json.dumps({"_target_": "bundle.networks.FeatureUNet", **S1_FAST})
    masks = {}
    for workers in (0, 1):
        out = tmp_path / f"workers{workers}"
        subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                        "--input_files", json.dumps(inputs), "--output_dir", str(out), "--ckpt_path", str(trained[1]),
                        "--onnx_path", str(tmp_path / "model.onnx"), "--slice_size", str(SIZE),
                        "--num_workers", str(workers), "--network_def", network_def],
                       cwd=request.config.rootpath, check=True, capture_output=True, timeout=300)
        masks[workers] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*.nii.gz"))}
    assert len(masks[0]) == 2 and masks[0].keys() == masks[1].keys()
    for name, mask in masks[0].items():
        assert np.array_equal(mask, masks[1][name]) and mask.any(), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize("keep", [True, False])
def test_freed_volume_memory_stays_in_the_heap(keep):
    """A 200 MB tensor allocated and freed: by default glibc maps it outside the heap and unmaps it when freed
    (fresh pages, one fault each, for the next volume); once keep_freed_memory() is set it comes from the heap,
    and the heap keeps its size after the free, ready for the next volume. Read from /proc/self/maps in a fresh
    process (the setting is process-wide). Page-fault counts are not asserted: sandboxed kernels reclaim
    idle pages on their own."""
    code = ("import torch, bundle.serving.runtime as i; kept = i.keep_freed_memory() if KEEP else None\n"
            "def heap():\n"
            "  line = next(l for l in open('/proc/self/maps') if l.rstrip().endswith('[heap]'))\n"
            "  return [int(x, 16) for x in line.split()[0].split('-')]\n"
            "a = torch.ones(50_000_000); p = a.data_ptr(); lo, hi = heap(); inside = lo <= p < hi; del a\n"
            "lo, hi = heap(); print(kept, inside, hi - lo)").replace("KEEP", str(keep))
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(arrays.__file__).parents[1], capture_output=True,
                         text=True, check=True).stdout.split()
    if keep:
        assert out[:2] == ["True", "True"] and int(out[2]) >= 200e6
    else:
        assert out[1] == "False" and int(out[2]) < 200e6


def test_nifti_reader_loads_what_monais_reader_loads(totalseg_dir, tmp_path):
    """inference.json's loader (CTReader: NiftiReader for NIfTI, ITK for the rest): the voxels, affine and meta data of
    MONAI's default loader, for int16, int32 and uint8 NIfTI, a scaled NIfTI and a DICOM series."""
    from monai.bundle import ConfigParser
    from monai.transforms import LoadImaged

    from bundle.io import NiftiReader

    ct = nib.load(totalseg_dir / "example_ct_sm.nii.gz")
    scaled = nib.Nifti1Image(np.asarray(ct.dataobj).astype(np.int16) // 2, ct.affine)
    scaled.header.set_slope_inter(2.0, -3.5)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    parser = ConfigParser()
    parser.read_config(Path(arrays.__file__).parents[1] / "configs" / "inference.json")
    loader = parser.get_parsed_content("image_loading")[0]
    assert isinstance(loader.ct_reader.nifti, NiftiReader)
    for path in ("example_ct_sm.nii.gz", "example_ct.nii.gz", "example_seg.nii.gz", tmp_path / "scaled.nii.gz",
                 "example_ct_dicom"):
        path = totalseg_dir / path
        expected = LoadImaged("image", image_only=True)({"image": str(path)})["image"]
        loaded = loader({"image": str(path)})["image"]
        assert loaded.dtype == expected.dtype == torch.float32 and loaded.is_contiguous(), path.name
        assert torch.allclose(loaded.as_tensor(), expected.as_tensor(), rtol=0, atol=1e-4), path.name
        assert torch.allclose(loaded.affine, expected.affine), path.name
        assert loaded.meta["spatial_shape"].tolist() == expected.meta["spatial_shape"].tolist(), path.name
    assert loaded.meta["filename_or_obj"] == str(path) and loaded.shape == (512, 512, 20)


def test_nifti_writer_writes_the_bytes_monais_writer_writes(totalseg_dir, tmp_path):
    from monai.transforms import LoadImage, SaveImage

    from bundle.io import NiftiWriter

    image = LoadImage(image_only=True, ensure_channel_first=True)(totalseg_dir / "example_ct_sm.nii.gz")
    for name, array, dtype in (("mask", image > 100, np.uint8), ("ct", image, np.float32)):
        written = []
        for writer in (None, NiftiWriter):
            out = tmp_path / ("monai" if writer is None else "fast")
            SaveImage(output_dir=out, output_postfix=name, output_dtype=dtype, resample=False, separate_folder=False,
                      print_log=False, writer=writer)(array)
            written.append(next(out.glob(f"*_{name}.nii.gz")))
        assert written[0].read_bytes() == written[1].read_bytes(), name
        assert np.array_equal(np.asarray(nib.load(written[1]).dataobj), np.asarray(array[0], dtype=dtype)), name
