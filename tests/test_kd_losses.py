"""Dense logit distillation (CWD, DIST), sound InfoNCE, and what a LossTerm does around its loss (warm-up,
labelled-only rows, float32 inputs, a detached teacher): known answers and where gradients go."""

import math

import pytest
import torch
from torch import nn

from bundle.losses.composite import CompositeLoss, LossTerm
from bundle.losses.contrastive import InfoNCEFeatureLoss, distinct_rows
from bundle.losses.logit_maps import ChannelWiseDistillation, InterPixelCorrelation, class_maps


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _sources(network: dict, teacher: dict | None = None, batch: dict | None = None) -> dict:
    return {"network": network, "teacher": teacher, "batch": batch or {}}


# --------------------------------------------------------------------------- CWD


def test_cwd_matches_hand_computed_two_pixel_maps():
    student = torch.zeros(1, 1, 1, 2)
    teacher = torch.tensor([[[[0.0, math.log(3.0)]]]])
    # spleen map: softmax([0, ln3]) = [1/4, 3/4] vs [1/2, 1/2]; the background map [-z] mirrors it.
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert ChannelWiseDistillation(temperature=1.0)(student, teacher).item() == pytest.approx(kl, rel=1e-6)
    # τ² scaling and softening: at τ = 2 the maps are softmax([0, ln3 / 2])
    p = torch.tensor([0.0, math.log(3.0) / 2]).softmax(0)
    kl2 = sum(float(pi) * math.log(float(pi) / 0.5) for pi in p)
    assert ChannelWiseDistillation(temperature=2.0)(student, teacher).item() == pytest.approx(4 * kl2, rel=1e-6)


def test_cwd_ignores_a_constant_logit_offset_but_not_a_spatial_one():
    teacher = torch.randn(2, 1, 8, 8) * 3
    loss = ChannelWiseDistillation()
    assert loss(teacher + 5.0, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(teacher.flip(-1), teacher).item() > 0.01
    assert class_maps(teacher).shape == (2, 2, 8, 8)


# --------------------------------------------------------------------------- DIST


def test_dist_inter_pixel_correlation_known_answers():
    teacher = torch.randn(3, 1, 16, 16) * 2
    loss = InterPixelCorrelation()
    assert loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-5)  # ρ = 1
    assert loss(-teacher, teacher).item() == pytest.approx(2.0, abs=1e-5)  # σ(-z) = 1 - σ(z): ρ = -1
    assert loss(torch.zeros_like(teacher), teacher).item() == pytest.approx(1.0, abs=1e-6)  # constant: ρ = 0


@pytest.mark.parametrize("loss", [ChannelWiseDistillation(), InterPixelCorrelation()], ids=["cwd", "dist"])
def test_logit_losses_send_gradients_to_the_student_only(loss):
    term = LossTerm(loss, ["network.seg", "teacher.seg"])
    student = torch.randn(2, 1, 12, 12, requires_grad=True)
    teacher = torch.randn(2, 1, 6, 6, requires_grad=True)  # another size: resized to the student's
    term(_sources({"seg": student}, {"seg": teacher})).backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None
    half = term(_sources({"seg": student.detach().half()}, {"seg": teacher.detach().half()}))
    assert half.dtype == torch.float32 and torch.isfinite(half)


# --------------------------------------------------------------------------- sound InfoNCE


def test_distinct_rows_keeps_the_first_of_each_duplicate():
    rows = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    assert distinct_rows(rows).tolist() == [0, 1, 3]


def test_infonce_never_uses_a_copy_of_the_positive_as_a_negative():
    """A slice drawn twice, and air cells that are all zero, add no term: the loss equals that of the
    distinct cells alone (before the fix, copies were negatives and the loss could not go below log 2)."""
    loss = InfoNCEFeatureLoss(4, 6, grid=4)
    student, teacher = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 8, 8)
    image = torch.rand(1, 1, 32, 32) + 0.1
    once = loss(student, teacher, image)
    twice = loss(student.repeat(2, 1, 1, 1), teacher.repeat(2, 1, 1, 1), image.repeat(2, 1, 1, 1))
    assert twice.item() == pytest.approx(once.item(), rel=1e-5)
    assert loss.kept_cells(teacher.repeat(2, 1, 1, 1)).numel() == 16

    air = image.clone()
    air[..., :16] = 0.0  # the left half of the slice is outside the body
    assert loss.kept_cells(teacher, air).numel() == 8


def test_infonce_heads_are_linear_and_smaller_than_the_student():
    from bundle.networks import FeatureUNet, count_parameters

    student = FeatureUNet(channels=(16, 32), bottleneck=64)
    teacher_channels = FeatureUNet(channels=(64, 128, 256, 512), bottleneck=1024, convs_per_block=2,
                                   reconstruction=True).feature_channels
    heads = sum(count_parameters(InfoNCEFeatureLoss(student.feature_channels[s], teacher_channels[s]))
                for s in ("encoder", "bottleneck", "decoder"))
    assert heads < count_parameters(student)
    assert all(isinstance(m, nn.Conv2d) for m in InfoNCEFeatureLoss(8, 16).teacher_head)


def test_infonce_is_normalised_to_one_at_chance():
    loss = InfoNCEFeatureLoss(4, 4, grid=4)
    loss.student_head = loss.teacher_head = nn.Identity()
    lengths = torch.arange(1.0, 33.0).reshape(2, 1, 4, 4)
    teacher = lengths * torch.ones(2, 4, 4, 4)  # 32 distinct cells, one direction after normalisation
    value = loss(torch.randn(2, 4, 4, 4), teacher)  # nothing to tell the cells apart: chance, log 32 / log 32
    assert value.item() == pytest.approx(1.0, rel=1e-5)


# --------------------------------------------------------------------------- LossTerm around its loss


class _Recorder(nn.Module):
    """A loss that keeps what it was handed (values, dtypes, whether they carry a graph)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.attached = []

    def forward(self, *inputs):
        self.calls.append([x.detach().clone() for x in inputs])
        self.attached.append([x.requires_grad for x in inputs])
        return sum(x.float().mean() for x in inputs)


def test_loss_term_detaches_the_teacher_and_only_the_teacher():
    recorder = _Recorder()
    term = LossTerm(recorder, ["network.seg", "teacher.seg", "batch.image"])
    student = torch.randn(2, 1, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 1, 4, 4, requires_grad=True)  # a teacher run with grad enabled, by mistake
    image = torch.randn(2, 1, 4, 4, requires_grad=True)
    term(_sources({"seg": student}, {"seg": teacher}, {"image": image})).backward()
    assert recorder.attached == [[True, False, True]]
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0 and image.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_loss_term_hands_the_loss_float32_from_half_precision_inputs(dtype):
    recorder = _Recorder()
    term = LossTerm(recorder, ["network.seg", "teacher.seg", "batch.label"])
    student = torch.randn(2, 1, 4, 4).to(dtype).requires_grad_()
    teacher = torch.randn(2, 1, 4, 4).to(dtype)
    label = torch.randint(0, 2, (2, 1, 4, 4))
    term(_sources({"seg": student}, {"seg": teacher}, {"label": label})).backward()
    assert [x.dtype for x in recorder.calls[0]] == [torch.float32, torch.float32, torch.int64]  # integers stay
    assert torch.equal(recorder.calls[0][0], student.detach().float())
    assert student.grad.dtype == dtype and student.grad.abs().sum() > 0  # the cast is part of the graph


def test_warmup_ramps_the_weight_linearly():
    term = LossTerm(_Recorder(), ["network.seg"], weight=2.0, warmup_epochs=4)
    assert [term.weight_at(e) for e in (0, 1, 2.5, 4, 10)] == [0.0, 0.5, 1.25, 2.0, 2.0]
    composite = CompositeLoss({"a": term, "b": LossTerm(_Recorder(), ["network.seg"], weight=3.0)})
    seg = torch.ones(1, 1, 2, 2, requires_grad=True)
    composite.set_progress(1.0)
    total, _ = composite({"seg": seg}, None, {})
    assert total.item() == pytest.approx(0.5 * 1 + 3.0 * 1)
    with pytest.raises(ValueError, match="warmup_epochs"):
        LossTerm(_Recorder(), ["network.seg"], warmup_epochs=-1)


def test_labelled_only_term_sees_only_labelled_rows_and_others_see_all():
    seg_loss, kd_loss = _Recorder(), _Recorder()
    composite = CompositeLoss({
        "seg": LossTerm(seg_loss, ["network.seg", "batch.label"], labeled_only=True),
        "kd": LossTerm(kd_loss, ["network.seg", "teacher.seg"]),
    })
    student = torch.arange(4.0).reshape(4, 1, 1, 1).requires_grad_()
    label = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(4, 1, 1, 1)
    total, _ = composite({"seg": student}, {"seg": torch.zeros(4, 1, 1, 1)},
                         {"label": label, "labeled": torch.tensor([1, 0, 1, 0])})
    assert seg_loss.calls[0][0].flatten().tolist() == [0.0, 2.0]
    assert seg_loss.calls[0][1].flatten().tolist() == [1.0, 1.0]
    assert kd_loss.calls[0][0].shape[0] == 4
    total.backward()
    assert student.grad.flatten().tolist() == pytest.approx([0.5 + 0.25, 0.25, 0.5 + 0.25, 0.25])

    none = composite({"seg": student}, {"seg": torch.zeros(4, 1, 1, 1)},
                     {"label": label, "labeled": torch.zeros(4)})[1]
    assert none["seg"].item() == 0.0 and len(seg_loss.calls) == 1  # no labelled row: the loss is not called


def test_labelled_only_term_with_no_labelled_row_is_a_zero_tensor_even_without_gradients():
    """Validation-style calls (no_grad) of a batch of unlabelled slices must still give a tensor the
    composite can detach and log, not a Python float."""
    composite = CompositeLoss({"seg": LossTerm(_Recorder(), ["network.seg", "batch.label"], labeled_only=True)})
    with torch.no_grad():
        total, terms = composite({"seg": torch.ones(2, 1, 1, 1)}, None,
                                 {"label": torch.zeros(2, 1, 1, 1), "labeled": torch.zeros(2)})
    assert isinstance(terms["seg"], torch.Tensor) and terms["seg"].item() == 0.0
    assert total.dtype == torch.float32


def test_dist_applies_its_temperature_before_the_sigmoid():
    """1 − ρ(σ(s/τ), σ(t/τ)) at τ = 2 and τ = 1, on two 4-pixel maps computed by hand."""
    student = torch.tensor([4.0, -2.0, 0.0, 2.0]).reshape(1, 1, 2, 2)
    teacher = torch.tensor([2.0, 0.0, -4.0, 6.0]).reshape(1, 1, 2, 2)

    def by_hand(tau):
        p = [1 / (1 + math.exp(-v / tau)) for v in student.flatten().tolist()]
        q = [1 / (1 + math.exp(-v / tau)) for v in teacher.flatten().tolist()]
        mp, mq = sum(p) / 4, sum(q) / 4
        cov = sum((a - mp) * (b - mq) for a, b in zip(p, q))
        var_p, var_q = sum((a - mp) ** 2 for a in p), sum((b - mq) ** 2 for b in q)
        return 1 - cov / math.sqrt(var_p * var_q)

    hot, cold = by_hand(2.0), by_hand(1.0)
    assert abs(hot - cold) > 0.01  # the maps are chosen so that τ changes the answer
    assert InterPixelCorrelation(temperature=2.0)(student, teacher).item() == pytest.approx(hot, abs=1e-5)
    assert InterPixelCorrelation(temperature=1.0)(student, teacher).item() == pytest.approx(cold, abs=1e-5)
