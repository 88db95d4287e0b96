"""Bring-your-own teachers (bundle.teacher): any 2D network through hooks, any 3D network (a MONAI bundle
folder) through per-volume sliding-window logits resampled onto the student's slices."""

import json
from pathlib import Path

import numpy as np
import nibabel as nib
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet, UNet
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ScaleIntensityRanged, Spacingd
from torch import nn

from bundle.engine import ComposedLossTrainer
from bundle.losses.composite import CompositeLoss, LossTerm
from bundle.teacher import SliceTeacher, TeacherLogitsd, VolumeTeacher, binary_logit, from_bundle
from conftest import META_FILE, REPO, TINY_STUDENT, config_files, error_chain


# ---------------------------------------------------------------- the spleen logit of any teacher

def test_the_binary_logit_of_a_softmax_teacher_gives_its_class_probability():
    logits = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0)) * 4
    for channel in range(5):
        z = binary_logit(logits, channel, "softmax")
        assert z.shape == (2, 1, 3, 4)
        torch.testing.assert_close(torch.sigmoid(z)[:, 0], torch.softmax(logits, 1)[:, channel], atol=1e-6, rtol=0)
    two = torch.tensor([[[-3.0]], [[5.0]]])[None]  # background, spleen
    torch.testing.assert_close(binary_logit(two, 1, "softmax"), torch.tensor([[[[8.0]]]]))  # l1 - l0


def test_a_sigmoid_teacher_gives_its_channel_and_bad_choices_are_named():
    logits = torch.randn(1, 3, 4, 4)
    assert torch.equal(binary_logit(logits, 2, "sigmoid"), logits[:, 2:3])
    with pytest.raises(ValueError, match="`teacher_channel` 3 does not exist: the teacher gives 3"):
        binary_logit(logits, 3, "softmax")
    with pytest.raises(ValueError, match="`teacher_activation` is 'relu'"):
        binary_logit(logits, 0, "relu")
    with pytest.raises(ValueError, match="softmax teacher needs at least two channels"):
        binary_logit(logits[:, :1], 0, "softmax")


# ---------------------------------------------------------------- 2D teachers

def _unet_2d():
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0)


def test_a_2d_monai_network_teaches_its_logit_and_the_features_it_was_told_about():
    network = _unet_2d().eval()
    teacher = SliceTeacher(network, channel=1, activation="softmax", features={"encoder": "model.1.submodule.0"})
    x = torch.randn(3, 1, 32, 32)
    out = teacher(x, return_features=True)
    torch.testing.assert_close(out["seg"], binary_logit(network(x), 1, "softmax"))
    assert set(out) == {"seg", "encoder"} == teacher.provides
    assert out["encoder"].shape[:2] == (3, teacher.feature_channels["encoder"]) == (3, 8)
    with pytest.raises(ValueError, match="names module 'model.9' for 'bottleneck', which UNet does not have"):
        SliceTeacher(network, features={"bottleneck": "model.9"})


def test_a_term_reading_a_feature_the_adapter_does_not_give_is_refused_before_training():
    teacher = SliceTeacher(_unet_2d(), channel=1, activation="softmax")  # logits only
    mse = LossTerm(nn.MSELoss(), ["network.encoder", "teacher.encoder"])
    student = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match=r"loss term 'mse' reads teacher output\(s\) \['encoder'\], but the "
                                         r"SliceTeacher gives only \['seg'\]. Map them .* `features`"):
        ComposedLossTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[], network=student,
                            optimizer=torch.optim.SGD(student.parameters(), 0.1),
                            loss_function=CompositeLoss({"mse": mse}), teacher=teacher)


# ---------------------------------------------------------------- 3D teachers: geometry, cache

class Affine3D(nn.Module):
    """An analytic 3D 'network': logit = 2 x - 1 at every voxel; counts its calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(2.0)
            self.conv.bias.fill_(-1.0)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def _ramp(path: Path, shape=(40, 36, 12), spacing=(2.0, 2.5, 5.0)) -> tuple[Path, np.ndarray]:
    """A CT whose HU are linear in world position (linear interpolation reproduces it exactly)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 50.0)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = np.einsum("ab,bijk->aijk", affine[:3, :3], np.stack([i, j, k])) + affine[:3, 3, None, None, None]
    hu = -200.0 + 3.0 * world[0] - 2.0 * world[1] + 1.5 * world[2]
    nib.save(nib.Nifti1Image(hu.astype(np.float32), affine), path)
    return path, affine


def _teacher_preprocessing(pixdim, window):
    return Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                    Spacingd("image", pixdim=pixdim, mode="bilinear"),
                    ScaleIntensityRanged("image", a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=False)])


def test_a_3d_teachers_logit_lands_on_the_students_grid_through_its_own_preprocessing(tmp_path):
    path, affine = _ramp(tmp_path / "ramp.nii.gz")
    window = (-1000.0, 1000.0)  # not the student's window, and no clipping: the answer stays linear in HU
    teacher = VolumeTeacher(Affine3D(), _teacher_preprocessing((4.0, 5.0, 5.0), window),  # coarser than the scan
                            SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.25), channel=0, activation="sigmoid")
    # the student's grid: the scan reoriented and resized in-plane to 24 x 24 (as preprocessing_3d makes it)
    from bundle.transforms import Resized
    student = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                       Resized("image", spatial_size=(24, 24, -1), mode="trilinear", anti_aliasing=True)])({"image": str(path)})
    target = student["image"]
    out = TeacherLogitsd(teacher)(dict(student))["teacher_seg"]
    assert out.shape == target.shape == (1, 24, 24, 12)

    grid = np.stack([*np.meshgrid(*[np.arange(n) for n in target.shape[1:]], indexing="ij"), np.ones(target.shape[1:])])
    world = np.einsum("ab,bijk->aijk", np.asarray(target.affine, dtype=np.float64), grid)[:3]
    hu = -200.0 + 3.0 * world[0] - 2.0 * world[1] + 1.5 * world[2]
    expected = 2.0 * (hu - window[0]) / (window[1] - window[0]) - 1.0
    inner = (slice(3, -3), slice(3, -3), slice(1, -1))  # the teacher's coarser grid ends inside the scan's edge
    np.testing.assert_allclose(out[0].numpy()[inner], expected[inner], atol=2e-4)
    assert np.abs(expected[inner]).max() > 0.05  # a non-trivial answer


def test_the_volume_cache_is_exact_and_bounded(tmp_path):
    first, _ = _ramp(tmp_path / "a.nii.gz")
    second, _ = _ramp(tmp_path / "b.nii.gz", spacing=(2.0, 2.5, 4.0))
    network = Affine3D()
    preprocessing = _teacher_preprocessing((2.0, 2.5, 5.0), (-1000.0, 1000.0))
    entry = 40 * 36 * 12 * 4  # one float32 logit volume on the target grid
    teacher = VolumeTeacher(network, preprocessing, SlidingWindowInferer(roi_size=(16, 16, 8)), channel=0,
                            activation="sigmoid", cache_megabytes=1.5 * entry / 2**20)
    target = lambda path: preprocessing({"image": str(path)})["image"]  # noqa: E731
    cold = teacher.on_grid(str(first), target(first))
    calls = network.calls
    warm = teacher.on_grid(str(first), target(first))
    assert network.calls == calls and teacher.hits == 1 and torch.equal(cold, warm)  # no second forward, same bits
    warm.add_(1.0)  # a caller changing its copy cannot change the cache
    assert torch.equal(teacher.on_grid(str(first), target(first)), cold)
    teacher.on_grid(str(second), target(second))
    assert len(teacher) == 1 and teacher.bytes == entry <= teacher.max_bytes  # the second did not fit
    with pytest.raises(RuntimeError, match="does not run on slices: put bundle.teacher.TeacherLogitsd"):
        teacher(torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------- a MONAI bundle folder as the teacher

def _write_bundle(folder: Path, network_def: dict, network: nn.Module, window=(-57, 164), pixdim=None,
                  roi=(32, 32, 16)) -> Path:
    transforms = [{"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
                  {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}]
    if pixdim:
        transforms.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim), "mode": "bilinear"})
    transforms += [{"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": window[0], "a_max": window[1],
                    "b_min": 0, "b_max": 1, "clip": True}, {"_target_": "EnsureTyped", "keys": "image"}]
    config = {"imports": ["$import glob"], "bundle_root": ".", "network_def": network_def,
              "datalist": "$list(sorted(glob.glob('/nowhere/*.nii.gz')))",  # model-zoo bundles carry such keys
              "preprocessing": {"_target_": "Compose", "transforms": transforms},
              "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 2, "overlap": 0.25}}
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


UNET_3D = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16],
           "strides": [2, 2], "num_res_units": 1, "norm": "batch"}
SEGRESNET_3D = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8,
                "blocks_down": [1, 1], "blocks_up": [1]}


def _kd_workflow(phantom_dir, root, teacher_bundle, **extra):
    overrides = dict(bundle_root=str(REPO), output_root=str(root), dataset_dir=str(phantom_dir), slice_size=64,
                     slices_per_volume=4, student_def=TINY_STUDENT, amp=False, epochs=1, val_interval=100,
                     teacher_bundle=str(teacher_bundle), publish=False, **extra)
    workflow = ConfigWorkflow(config_file=config_files("kd", "teacher_bundle"), meta_file=META_FILE, logging_file=False,
                              workflow_type="train", run_id="training", **overrides)
    workflow.initialize()
    return workflow


@pytest.mark.parametrize("definition, cls", [(UNET_3D, UNet), (SEGRESNET_3D, SegResNet)], ids=["UNet", "SegResNet"])
def test_a_3d_monai_bundle_distils_into_the_student_and_stays_frozen(phantom_dir, tmp_path, definition, cls):
    torch.manual_seed(0)
    network = cls(**{k: v for k, v in definition.items() if k != "_target_"})
    folder = _write_bundle(tmp_path / "bundle", definition, network, pixdim=(8.0, 8.0, 10.0))  # its own spacing
    workflow = _kd_workflow(phantom_dir, tmp_path / "run", folder)
    teacher, trainer = workflow.parser.get_parsed_content("teacher"), workflow.parser.get_parsed_content("train#trainer")
    student = workflow.parser.get_parsed_content("network")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in student.parameters()]
    distilled = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: distilled.append(e.state.output["loss_terms"]["dist"]))
    workflow.run()
    assert distilled and all(float(v) > 0 for v in distilled)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    volumes = len(workflow.parser.get_parsed_content("train#dataset")) + len(workflow.parser.get_parsed_content("train#unlabeled_dataset"))
    assert teacher.misses == volumes > 0  # once per volume, labelled and unlabelled, at caching time


def test_the_slice_the_loss_gets_is_the_teachers_volume_output_on_that_slice(phantom_dir, tmp_path):
    """Analytic teacher (2 x - 1), the student's window and grid: the teacher's slice must be 2 x - 1 of the
    student's slice, for every labelled and unlabelled slice of every batch."""
    definition = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1, "kernel_size": 1}
    folder = _write_bundle(tmp_path / "bundle", definition, Affine3D().conv)
    workflow = _kd_workflow(phantom_dir, tmp_path / "run", folder, teacher_activation="sigmoid", teacher_channel=0)
    dist = workflow.parser.get_parsed_content("loss").terms["dist"].loss
    trainer = workflow.parser.get_parsed_content("train#trainer")
    seen, images, labelled = [], [], []
    dist.register_forward_pre_hook(lambda _m, args: seen.append(args[1].detach().clone()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: images.append(e.state.output["image"].detach().clone()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: labelled.append(e.state.batch["labeled"].clone()))
    workflow.run()
    assert len(seen) == len(images) > 0
    assert any(bool((flags == 0).any()) for flags in labelled)  # unlabelled slices were among them
    for teacher_slice, image in zip(seen, images):
        torch.testing.assert_close(teacher_slice, 2 * image.float() - 1, atol=1e-5, rtol=0)


def test_a_teacher_bundle_that_is_not_one_is_named(tmp_path):
    with pytest.raises(ValueError, match="set `teacher_bundle` to a MONAI bundle folder.*monai.bundle download"):
        from_bundle(None)
    (tmp_path / "configs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no configs/inference.json .*models/model.pt"):
        from_bundle(tmp_path)
    (tmp_path / "configs" / "inference.json").write_text(json.dumps({"network_def": UNET_3D}))
    (tmp_path / "models").mkdir()
    torch.save(UNet(**{k: v for k, v in UNET_3D.items() if k != "_target_"}).state_dict(), tmp_path / "models" / "model.pt")
    with pytest.raises(ValueError, match="has no `preprocessing`"):
        from_bundle(tmp_path)


def test_kd_with_teacher_bundle_json_and_no_folder_says_what_to_set(phantom_dir, tmp_path):
    workflow = ConfigWorkflow(config_file=config_files("kd", "teacher_bundle"), meta_file=META_FILE, logging_file=False,
                              workflow_type="train", run_id="training", bundle_root=str(REPO), output_root=str(tmp_path),
                              dataset_dir=str(phantom_dir), student_def=TINY_STUDENT, slice_size=32)
    workflow.initialize()
    with pytest.raises(Exception) as caught:
        workflow.parser.get_parsed_content("train#trainer")
    assert "set `teacher_bundle` to a MONAI bundle folder" in error_chain(caught.value)


def workflow_overrides(root, phantom_dir):
    return dict(bundle_root=str(REPO), output_root=str(root), dataset_dir=str(phantom_dir), amp=False,
                teacher_3d_roi=[32, 32, 16], teacher_3d_pixdim=[6.0, 6.0, 10.0],
                teacher_3d_args={**{k: v for k, v in UNET_3D.items() if k != "_target_"}, "channels": [4, 8, 16]})


def test_a_3d_teacher_trained_here_is_a_bundle_that_kd_distils_from(phantom_dir, tmp_path):
    root = tmp_path / "run"
    workflow = ConfigWorkflow(config_file=config_files("teacher_3d"), meta_file=META_FILE, logging_file=False,
                              workflow_type="train", run_id="training", **workflow_overrides(root, phantom_dir),
                              epochs=2, val_interval=1, patches_per_volume=1)
    workflow.initialize()
    workflow.run()
    evaluation = ConfigWorkflow(config_file=config_files("teacher_3d", evaluate=True), meta_file=META_FILE, logging_file=False,
                                workflow_type="eval", run_id="evaluating", **{**workflow_overrides(root, phantom_dir), "split": "test"})
    evaluation.initialize()
    evaluation.run()
    summary = json.loads((root / "eval" / "teacher_3d" / "test" / "summary.json").read_text())
    test_cases = len(json.loads((root / "eval" / "datalist.json").read_text())["test"])
    assert summary["volumes"] == test_cases > 0 and 0.0 <= summary["metrics"]["dice"]["mean"] <= 1.0
    folder = root / "bundles" / "teacher_3d"
    trained = torch.load(root / "models" / "teacher_3d" / "model.pt", weights_only=True)
    assert all(torch.equal(v, torch.load(folder / "models" / "model.pt", weights_only=True)[k]) for k, v in trained.items())
    teacher = from_bundle(folder)
    assert isinstance(teacher.network, UNet) and teacher.activation == "softmax" and list(teacher.inferer.roi_size) == [32, 32, 16]
    kd = _kd_workflow(phantom_dir, tmp_path / "kd", folder)
    kd.run()
    assert kd.parser.get_parsed_content("teacher").misses > 0


def test_a_2d_monai_unet_teaches_through_the_config_as_docs_teachers_md_shows(phantom_dir, tmp_path):
    weights = tmp_path / "my_unet.pt"
    torch.save(_unet_2d().state_dict(), weights)
    teacher = {"_target_": "bundle.teacher.SliceTeacher", "channel": 1, "activation": "softmax",
               "network": f"$bundle.checkpoint.load_weights(monai.networks.nets.UNet(spatial_dims=2, in_channels=1, "
                          f"out_channels=2, channels=[4, 8, 16], strides=[2, 2], num_res_units=0), '{weights}', role='teacher')",
               "features": {"encoder": "model.1.submodule.1.submodule"}}  # the 16-channel bottom block
    overrides = dict(bundle_root=str(REPO), output_root=str(tmp_path / "run"), dataset_dir=str(phantom_dir), slice_size=32,
                     slices_per_volume=4, student_def=TINY_STUDENT, amp=False, epochs=1, val_interval=100, publish=False,
                     teacher=teacher, distill=["dist", "infonce_encoder"])
    workflow = ConfigWorkflow(config_file=config_files("kd"), meta_file=META_FILE, logging_file=False,
                              workflow_type="train", run_id="training", **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    terms = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: terms.append(dict(e.state.output["loss_terms"])))
    workflow.run()
    assert terms and all(float(t["dist"]) > 0 and float(t["infonce_encoder"]) > 0 for t in terms)
    head = workflow.parser.get_parsed_content("loss").terms["infonce_encoder"].loss.teacher_head
    assert next(p for p in head.parameters() if p.dim() == 4).shape[1] == 16  # sized from the tapped feature


def test_an_ensemble_of_teachers_distils_through_dist_and_refuses_feature_terms_before_training(phantom_dir, tmp_path):
    from bundle.networks import FeatureUNet, MeanLogitEnsemble
    from bundle.serving.model_info import network_definition

    torch.manual_seed(0)
    ensemble = MeanLogitEnsemble([FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True) for _ in range(2)])
    assert ensemble.provides == ["rec", "seg"]
    weights = tmp_path / "ensemble.pt"
    torch.save(ensemble.state_dict(), weights)
    base = dict(bundle_root=str(REPO), dataset_dir=str(phantom_dir), slice_size=32, slices_per_volume=4,
                student_def=TINY_STUDENT, amp=False, epochs=1, val_interval=100, publish=False,
                teacher_def=network_definition(ensemble), teacher_ckpt=str(weights))
    workflow = ConfigWorkflow(config_file=config_files("kd"), meta_file=META_FILE, logging_file=False, workflow_type="train",
                              run_id="training", output_root=str(tmp_path / "dist"), distill=["dist"], **base)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    terms = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: terms.append(float(e.state.output["loss_terms"]["dist"])))
    workflow.run()
    assert terms and all(t > 0 for t in terms)
    teacher = workflow.parser.get_parsed_content("teacher")
    torch.testing.assert_close(teacher.state_dict(), ensemble.state_dict())  # frozen: distillation left it as loaded
    workflow = ConfigWorkflow(config_file=config_files("kd"), meta_file=META_FILE, logging_file=False, workflow_type="train",
                              run_id="training", output_root=str(tmp_path / "feat"), distill=["infonce_encoder"], **base)
    workflow.initialize()
    with pytest.raises(Exception) as raised:
        workflow.parser.get_parsed_content("train#trainer")
    assert "reads teacher output(s) ['encoder'], but the MeanLogitEnsemble gives only ['rec', 'seg']" in error_chain(raised.value)
