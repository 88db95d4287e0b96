"""Distillation losses: exact maths on hand-computed cases, shape adaptation, and where gradients go."""

import math

import pytest
import torch
from torch import nn

from bundle.losses.composite import LossTerm
from bundle.losses.contrastive import InfoNCEFeatureLoss, info_nce
from bundle.losses.feature_regression import FeatureMSELoss
from bundle.losses.prediction_map import PredictionMapDistillation
from bundle.losses.logit_maps import ChannelWiseDistillation, InterPixelCorrelation
from bundle.losses.region_affinity import ImportanceMapLoss, PixelRegionAffinityLoss, RegionAffinityLoss


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _identity_heads(loss: InfoNCEFeatureLoss) -> InfoNCEFeatureLoss:
    """Expose the pooling / pairing of the module without learned projections."""
    loss.student_head = nn.Identity()
    loss.teacher_head = nn.Identity()
    return loss


def _spleen_label(batch=2, size=32, rows=slice(8, 20), cols=slice(6, 18)):
    label = torch.zeros(batch, 1, size, size)
    label[:, :, rows, cols] = 1
    return label


def _through_term(loss: nn.Module, student: torch.Tensor, teacher: torch.Tensor, **batch) -> torch.Tensor:
    """``loss(student, teacher, *batch values)`` as the trainer calls it: through a :class:`LossTerm`."""
    inputs = ["network.x", "teacher.x", *(f"batch.{key}" for key in batch)]
    return LossTerm(loss, inputs)({"network": {"x": student}, "teacher": {"x": teacher}, "batch": batch})


# --------------------------------------------------------------------------- InfoNCE


def test_info_nce_matches_hand_computed_2x2():
    s = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    tau = 0.5
    # logits = s @ t.T / tau = [[1.6, 0.0], [1.92, 1.6]]
    row0 = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(0.0)))
    row1 = -math.log(math.exp(1.6) / (math.exp(1.92) + math.exp(1.6)))
    assert info_nce(s, t, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_info_nce_with_positive_mask_matches_hand_computed_3x3():
    eye = torch.eye(3)
    cls = torch.tensor([0, 0, 1])
    mask = cls[:, None] == cls[None, :]
    # logits = I: rows 0 and 1 average -log p over two positives, row 2 has one.
    z = math.log(math.e + 2)
    expected = ((z - 0.5) + (z - 0.5) + (z - 1.0)) / 3
    assert info_nce(eye, eye, 1.0, mask).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_log_n_for_uninformative_embeddings():
    n = 256
    zeros = torch.zeros(n, 8)
    assert info_nce(zeros, zeros, 0.1).item() == pytest.approx(math.log(n), rel=1e-6)
    s = nn.functional.normalize(torch.randn(n, 4096), dim=1)
    t = nn.functional.normalize(torch.randn(n, 4096), dim=1)
    assert info_nce(s, t, 1.0).item() == pytest.approx(math.log(n), abs=0.01)


def test_info_nce_vanishes_for_aligned_orthonormal_embeddings():
    eye = torch.eye(16)
    assert info_nce(eye, eye, 0.01).item() < 1e-6
    assert info_nce(eye, eye.flip(0), 0.01).item() > 10  # positives misaligned


def test_infonce_pools_to_a_bounded_grid_of_cells():
    """Identical embeddings and identity heads give exactly log(N)/log(N) = 1 before any learning; the kept
    cells reveal N = B · cells."""
    loss = InfoNCEFeatureLoss(4, 4, grid=8)
    big = torch.randn(2, 4, 128, 128)
    small = torch.randn(2, 4, 4, 4)
    assert loss.kept_cells(big).numel() == 2 * 64
    assert loss.kept_cells(small).numel() == 2 * 16
    assert loss.kept_cells(torch.randn(2, 4, 8, 8), student_feat=small).numel() == 2 * 16  # never finer than a map


def _distinct_half_planes(batch=2):
    """A 4×4 map per image whose left half points along channel 0 and right half along channel 1, every
    cell with its own length: all cells distinct, but only two directions after normalisation."""
    feat = torch.zeros(batch, 2, 4, 4)
    lengths = torch.arange(1, batch * 16 + 1, dtype=torch.float32).reshape(batch, 4, 4)
    feat[:, 0, :, :2] = lengths[:, :, :2]
    feat[:, 1, :, 2:] = lengths[:, :, 2:]
    return feat


def test_supervised_infonce_takes_positives_from_the_pooled_label():
    tau = 0.1
    feat = _distinct_half_planes()
    loss = _identity_heads(InfoNCEFeatureLoss(2, 2, grid=4, temperature=tau, supervised=True))
    left = torch.zeros(2, 1, 32, 32, dtype=torch.int64)
    left[..., :16] = 1
    # 32 cells, 16 per class; every same-class cell has logit 1/tau, the others 0; normalised by log 32.
    expected = (-1 / tau + math.log(16 * math.exp(1 / tau) + 16)) / math.log(32)
    assert loss(feat, feat, label=left).item() == pytest.approx(expected, rel=1e-5)
    top = torch.zeros(2, 1, 32, 32)
    top[..., :16, :] = 1  # classes that cut across the feature structure
    assert loss(feat, feat, label=top).item() > expected + 0.2


def test_supervised_infonce_needs_a_label():
    with pytest.raises(ValueError, match="label"):
        InfoNCEFeatureLoss(4, 8, supervised=True)(torch.randn(1, 4, 8, 8), torch.randn(1, 8, 8, 8))


def test_infonce_heads_are_registered_persistent_and_trainable():
    loss = InfoNCEFeatureLoss(8, 16, embed_dim=8, grid=4)
    keys = loss.state_dict().keys()
    assert any(k.startswith("student_head.") for k in keys) and any(k.startswith("teacher_head.") for k in keys)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    s, t = torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)
    first = loss(s, t)
    assert all(torch.equal(before[k], v) for k, v in loss.state_dict().items())  # not rebuilt per call
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss(s, t).backward()
        opt.step()
    assert loss(s, t).item() < 0.8 * first.item()


def test_infonce_is_finite_for_zero_and_half_precision_features():
    loss = InfoNCEFeatureLoss(8, 16, grid=4)
    out = loss(torch.zeros(2, 8, 16, 16), torch.zeros(2, 16, 16, 16))
    assert torch.isfinite(out)
    half = _through_term(loss, torch.randn(2, 8, 16, 16).half(), torch.randn(2, 16, 8, 8).half())
    assert half.dtype == torch.float32 and torch.isfinite(half)


# --------------------------------------------------------------------------- prediction maps


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("channels", [1, 2])
def test_pmd_is_exactly_zero_for_identical_maps_and_positive_otherwise(channels):
    pmd = PredictionMapDistillation(temperature=4.0)
    z = torch.randn(2, channels, 8, 8)
    assert pmd(z, z.clone()).item() == 0.0
    assert pmd(z, z + torch.randn_like(z)).item() > 0


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_pmd_matches_closed_form_on_one_pixel(temperature):
    zs, zt = [1.0, 3.0], [2.0, -1.0]
    expected = _kl(_softmax(zt, temperature), _softmax(zs, temperature)) * temperature**2
    pmd = PredictionMapDistillation(temperature)
    out = pmd(torch.tensor(zs).view(1, 2, 1, 1), torch.tensor(zt).view(1, 2, 1, 1))
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_pmd_single_logit_is_bernoulli_kl_not_a_degenerate_softmax():
    """A softmax over one channel would be identically 1 and this loss identically 0."""
    t = 2.0
    zs, zt = 0.5, 2.0
    p, q = 1 / (1 + math.exp(-zt / t)), 1 / (1 + math.exp(-zs / t))
    expected = _kl([p, 1 - p], [q, 1 - q]) * t**2
    out = PredictionMapDistillation(t)(torch.full((1, 1, 1, 1), zs), torch.full((1, 1, 1, 1), zt))
    assert expected > 0.01
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_pmd_single_logit_equals_two_class_form():
    pmd = PredictionMapDistillation(3.0)
    zs, zt = torch.randn(2, 1, 6, 6), torch.randn(2, 1, 6, 6)
    zeros = torch.zeros_like(zs)
    one = pmd(zs, zt)
    assert one.item() == pytest.approx(pmd(torch.cat([zs, zeros], 1), torch.cat([zt, zeros], 1)).item(), rel=1e-5)
    # a sigmoid student against a background-first softmax teacher
    assert one.item() == pytest.approx(pmd(zs, torch.cat([zeros, zt], 1)).item(), rel=1e-5)


def test_pmd_averages_over_pixels():
    pmd = PredictionMapDistillation(4.0)
    zs, zt = torch.tensor([0.3, -1.0]), torch.tensor([2.0, 0.5])

    def constant(z, b, h, w):
        return z.view(1, 2, 1, 1).expand(b, 2, h, w).contiguous()

    single = pmd(constant(zs, 1, 1, 1), constant(zt, 1, 1, 1)).item()
    assert pmd(constant(zs, 3, 7, 5), constant(zt, 3, 7, 5)).item() == pytest.approx(single, rel=1e-5)
    # a teacher at another resolution is resized to the student's
    assert pmd(constant(zs, 2, 16, 16), constant(zt, 2, 4, 4)).item() == pytest.approx(single, rel=1e-5)


def test_pmd_resizes_teacher_logits_bilinearly():
    pmd = PredictionMapDistillation(1.0)
    teacher = torch.randn(1, 1, 4, 4)
    student = nn.functional.interpolate(teacher, size=(8, 8), mode="bilinear", align_corners=False)
    assert pmd(student, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_pmd_gradient_reaches_student_logits_only():
    student = torch.randn(2, 1, 8, 8, requires_grad=True)
    teacher = torch.randn(2, 1, 8, 8, requires_grad=True)  # not detached by the caller
    _through_term(PredictionMapDistillation(4.0), student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_pmd_rejects_mismatched_classes():
    with pytest.raises(ValueError, match="classes"):
        PredictionMapDistillation()(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4))


# --------------------------------------------------------------------------- feature regression


def test_feature_mse_is_zero_when_the_adapted_student_equals_the_teacher():
    loss = FeatureMSELoss(8, 8)
    with torch.no_grad():
        loss.adapter.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        loss.adapter.bias.zero_()
    feat = torch.randn(2, 8, 16, 16)
    assert loss(feat, feat.clone()).item() == 0.0
    # the teacher map is coarser: the student is pooled to it
    coarse = nn.functional.adaptive_avg_pool2d(feat, 4)
    assert loss(feat, coarse).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(feat, feat + 0.1).item() == pytest.approx(0.01, rel=1e-4)


def test_feature_mse_gradient_reaches_adapter_and_student_not_teacher():
    loss = FeatureMSELoss(4, 12)
    student = torch.randn(2, 4, 16, 16, requires_grad=True)
    teacher = torch.randn(2, 12, 8, 8, requires_grad=True)
    _through_term(loss, student, teacher).backward()
    assert loss.adapter.weight.grad.abs().sum() > 0
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


# --------------------------------------------------------------------------- region affinity


def test_region_affinity_is_zero_for_equivalent_features_and_positive_otherwise():
    loss = RegionAffinityLoss()
    label = _spleen_label()
    teacher = torch.randn(2, 16, 16, 16)
    assert loss(teacher.clone(), teacher, label).item() == 0.0
    assert loss(3.0 * teacher, teacher, label).item() == pytest.approx(0.0, abs=1e-10)  # cosine: scale-free
    assert loss(torch.randn(2, 16, 16, 16), teacher, label).item() > 0
    assert loss(torch.randn(2, 4, 32, 32), teacher, label).item() > 0  # widths and sizes may differ


def test_region_affinity_skips_images_without_spleen():
    loss = RegionAffinityLoss()
    student = torch.randn(2, 8, 16, 16, requires_grad=True)
    teacher = torch.randn(2, 32, 8, 8)
    empty = torch.zeros(2, 1, 32, 32)
    out = loss(student, teacher, empty)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.isfinite(student.grad).all()
    # in a mixed batch only the image with a spleen counts
    label = _spleen_label()
    label[1] = 0
    assert loss(student, teacher, label).item() == pytest.approx(
        loss(student[:1], teacher[:1], label[:1]).item(), rel=1e-6
    )


def test_region_affinity_is_finite_for_zero_features_and_reaches_the_student():
    loss = RegionAffinityLoss()
    label = _spleen_label()
    zero = torch.zeros(2, 8, 16, 16, requires_grad=True)
    out = loss(zero, torch.randn(2, 16, 16, 16), label)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(zero.grad).all()
    student = torch.randn(2, 8, 16, 16, requires_grad=True)
    teacher = torch.randn(2, 16, 8, 8, requires_grad=True)
    _through_term(loss, student, teacher, label=label).backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


def _two_region_features(spleen_mean, background_mean, label):
    """``[1, C, H, W]`` features whose spleen and background pixels vary around the given means."""
    spleen = label[:1] > 0.5
    noise = torch.randn(1, len(spleen_mean), *label.shape[-2:])
    noise = noise - (noise * spleen).sum(dim=(2, 3), keepdim=True) / spleen.sum() * spleen \
        - (noise * ~spleen).sum(dim=(2, 3), keepdim=True) / (~spleen).sum() * ~spleen  # zero-mean per region
    means = torch.where(spleen, torch.tensor(spleen_mean)[None, :, None, None], torch.tensor(background_mean)[None, :, None, None])
    return means + 0.5 * noise


def test_region_affinity_is_qin_et_al_s_region_term_only():
    """Qin et al. match the cosine of the region means; pixel patterns around equal means cost nothing
    (the first version added a pixel-to-region term they do not have)."""
    label = _spleen_label(batch=1)
    teacher = _two_region_features([1.0, 0.0], [1.0, 1.0], label)  # cos 45 degrees = 0.7071
    same_means = _two_region_features([2.0, 0.0], [3.0, 3.0], label)  # same angle, other pixels and norms
    orthogonal = _two_region_features([0.0, 1.0], [1.0, 0.0], label)  # cos 0
    assert RegionAffinityLoss()(same_means, teacher, label).item() == pytest.approx(0.0, abs=1e-10)
    assert RegionAffinityLoss()(orthogonal, teacher, label).item() == pytest.approx(0.5, rel=1e-5)
    assert PixelRegionAffinityLoss()(same_means, teacher, label).item() > 1e-3  # the separate, named option


def test_importance_map_loss_compares_where_features_are_strong():
    teacher = torch.randn(2, 16, 8, 8)
    rescaled_and_wider = torch.cat([3 * teacher, -3 * teacher], dim=1)  # same map up to scale
    assert ImportanceMapLoss()(rescaled_and_wider, teacher).item() == pytest.approx(0.0, abs=1e-10)
    peak = torch.zeros(1, 4, 2, 2)
    peak[:, :, 0, 0] = 1.0  # all importance at one of four pixels, against a uniform teacher
    # unit maps (1, 0, 0, 0) and (1/2, 1/2, 1/2, 1/2): squared distance (1/2)^2 + 3 (1/2)^2 = 1
    assert ImportanceMapLoss()(peak, torch.ones(1, 4, 2, 2)).item() == pytest.approx(1.0, rel=1e-6)
    assert ImportanceMapLoss()(torch.randn(2, 4, 16, 16), teacher).item() > 0  # sizes may differ


# every distillation loss with the inputs its config entry declares (``seg`` is the first feature channel)
LOSSES_ON_TEACHER = {
    "infonce": (lambda: InfoNCEFeatureLoss(8, 16), ["network.feat", "teacher.feat", "batch.image"]),
    "infonce_supervised": (lambda: InfoNCEFeatureLoss(8, 16, supervised=True),
                           ["network.feat", "teacher.feat", "batch.image", "batch.label"]),
    "mse": (lambda: FeatureMSELoss(8, 16), ["network.feat", "teacher.feat"]),
    "pmd": (PredictionMapDistillation, ["network.seg", "teacher.seg"]),
    "cwd": (ChannelWiseDistillation, ["network.seg", "teacher.seg"]),
    "dist": (InterPixelCorrelation, ["network.seg", "teacher.seg"]),
    "region_affinity": (RegionAffinityLoss, ["network.feat", "teacher.feat", "batch.label"]),
    "pixel_region_affinity": (PixelRegionAffinityLoss, ["network.feat", "teacher.feat", "batch.label"]),
    "importance_map": (ImportanceMapLoss, ["network.feat", "teacher.feat"]),
}


@pytest.mark.parametrize("name", sorted(LOSSES_ON_TEACHER))
def test_no_gradient_reaches_a_teacher_tensor_that_requires_grad(name):
    """The losses do not detach the teacher themselves: the LossTerm that reads them must, for every one."""
    make_loss, inputs = LOSSES_ON_TEACHER[name]
    student = torch.randn(2, 8, 16, 16, requires_grad=True)
    teacher = torch.randn(2, 16, 8, 8, requires_grad=True)
    batch = {"image": torch.rand(2, 1, 16, 16) + 0.1,
             "label": _spleen_label(size=16, rows=slice(4, 10), cols=slice(3, 9))}
    sources = {"network": {"feat": student, "seg": student[:, :1]}, "teacher": {"feat": teacher, "seg": teacher[:, :1]},
               "batch": batch}
    LossTerm(make_loss(), inputs)(sources).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0


# --------------------------------------------------------------------------- composition


class _TinyNet(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        feat = torch.relu(self.body(x))
        return feat, self.head(feat)


def test_student_and_heads_learn_while_the_frozen_teacher_stays_untouched():
    student, teacher = _TinyNet(8), _TinyNet(16)
    teacher.eval().requires_grad_(False)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    losses = nn.ModuleList([InfoNCEFeatureLoss(8, 16, embed_dim=8, grid=4), PredictionMapDistillation(),
                            FeatureMSELoss(8, 16)])
    opt = torch.optim.SGD(list(student.parameters()) + list(losses.parameters()), lr=0.1)

    x = torch.randn(2, 1, 16, 16)
    s_feat, s_logits = student(x)
    t_feat, t_logits = teacher(x)
    total = losses[0](s_feat, t_feat) + losses[1](s_logits, t_logits) + losses[2](s_feat, t_feat)
    total.backward()

    for name, p in [*student.named_parameters(), *losses.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize(
    "student_shape, teacher_shape",
    [((16, 128), (64, 128)), ((32, 64), (512, 16)), ((64, 32), (1024, 8)), ((16, 128), (768, 8))],
    ids=["16@128-64@128", "32@64-512@16", "64@32-1024@8", "16@128-vit768@8"],
)
@pytest.mark.parametrize("kind", ["infonce", "mse", "region"])
def test_losses_adapt_to_student_and_teacher_shapes(kind, student_shape, teacher_shape):
    (cs, hs), (ct, ht) = student_shape, teacher_shape
    student = torch.randn(2, cs, hs, hs, requires_grad=True)
    teacher = torch.randn(2, ct, ht, ht)
    label = _spleen_label(size=128, rows=slice(30, 80), cols=slice(40, 90))
    if kind == "infonce":
        out = InfoNCEFeatureLoss(cs, ct)(student, teacher, label=label)
    elif kind == "mse":
        out = FeatureMSELoss(cs, ct)(student, teacher)
    else:
        out = RegionAffinityLoss()(student, teacher, label)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_label_losses_return_plain_tensors_for_monai_labels():
    from monai.data import MetaTensor

    label = MetaTensor(_spleen_label(size=16))
    student, teacher = torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8)
    assert type(InfoNCEFeatureLoss(4, 8, grid=4, supervised=True)(student, teacher, label=label)) is torch.Tensor
    assert type(RegionAffinityLoss()(student, teacher, label)) is torch.Tensor
