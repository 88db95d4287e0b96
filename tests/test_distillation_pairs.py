"""Every (teacher, student, scale) pair of T1/T2 × S1/S2 at paper widths distills through the
configured heads: the losses are finite, the student and heads get gradients, the teacher none."""

import pytest
import torch

from bundle.losses.composite import CompositeLoss, LossTerm
from bundle.losses.contrastive import InfoNCEFeatureLoss
from bundle.losses.feature_regression import FeatureMSELoss
from bundle.losses.prediction_map import PredictionMapDistillation
from bundle.losses.region_affinity import RegionAffinityLoss
from bundle.networks import SCALES, FeatureUNet, MultiTaskUNETR
from bundle.teacher import freeze

SIZE = 64


@pytest.fixture(scope="module")
def teachers():
    torch.manual_seed(0)
    return {
        "T1": freeze(FeatureUNet(channels=(64, 128, 256, 512), bottleneck=1024, convs_per_block=2, reconstruction=True)),
        "T2": freeze(MultiTaskUNETR(img_size=SIZE)),
    }


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    image = torch.rand(2, 1, SIZE, SIZE)
    label = torch.zeros(2, 1, SIZE, SIZE)
    label[:, :, 16:40, 20:44] = 1
    return {"image": image, "label": label}


@pytest.mark.parametrize("teacher_name", ["T1", "T2"])
@pytest.mark.parametrize("student_kwargs", [dict(channels=(16, 32), bottleneck=64),
                                            dict(channels=(16, 32, 64), bottleneck=128)], ids=["S1", "S2"])
def test_all_scales_and_losses_adapt_between_teacher_and_student(teachers, batch, teacher_name, student_kwargs):
    teacher = teachers[teacher_name]
    student = FeatureUNet(**student_kwargs)
    terms = {"pmd": LossTerm(PredictionMapDistillation(), ["network.seg", "teacher.seg"])}
    for scale in SCALES:
        s, t = student.feature_channels[scale], teacher.feature_channels[scale]
        terms[f"infonce_{scale}"] = LossTerm(InfoNCEFeatureLoss(s, t), [f"network.{scale}", f"teacher.{scale}"])
        terms[f"mse_{scale}"] = LossTerm(FeatureMSELoss(s, t), [f"network.{scale}", f"teacher.{scale}"])
        terms[f"affinity_{scale}"] = LossTerm(RegionAffinityLoss(), [f"network.{scale}", f"teacher.{scale}", "batch.label"])
    loss = CompositeLoss(terms)
    with torch.no_grad():
        teacher_out = teacher(batch["image"], return_features=True)
    total, values = loss(student(batch["image"], return_features=True), teacher_out, batch)
    assert all(torch.isfinite(v) for v in values.values())
    assert all(values[f"infonce_{scale}"] > 0 for scale in SCALES)
    total.backward()
    for name, parameter in list(student.named_parameters()) + list(loss.named_parameters()):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
