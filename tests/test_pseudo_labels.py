"""Pseudo-labels (bundle.losses.pseudo_label): the teacher's mask or probabilities as the student's
segmentation target on unlabelled slices only; known answers, where gradients go, and a run on images
that have no label files."""

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.losses import DiceCELoss

from bundle.losses.composite import CompositeLoss, LossTerm
from bundle.losses.pseudo_label import PseudoLabelLoss
from conftest import META_FILE, config_files


def test_a_hard_pseudo_label_is_the_teachers_thresholded_mask_under_the_seg_loss():
    student = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    teacher = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 3
    mask = (teacher > 0).float()  # sigmoid(t) > 0.5
    expected = DiceCELoss(sigmoid=True)(student, mask)
    assert PseudoLabelLoss()(student, teacher).item() == pytest.approx(expected.item(), rel=1e-6)
    # a teacher certain everywhere gives the same loss as its mask given as a label
    assert PseudoLabelLoss(soft=True)(student, (mask * 2 - 1) * 50).item() == pytest.approx(expected.item(), rel=1e-5)
    strict = PseudoLabelLoss(threshold=0.9)
    assert torch.equal(strict.target(student, teacher), (torch.sigmoid(teacher) > 0.9).float())
    with pytest.raises(ValueError, match="threshold must be a probability"):
        PseudoLabelLoss(threshold=1.0)


def test_a_soft_pseudo_label_is_the_teachers_probability():
    student, teacher = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    expected = DiceCELoss(sigmoid=True)(student, torch.sigmoid(teacher))
    assert PseudoLabelLoss(soft=True)(student, teacher).item() == pytest.approx(expected.item(), rel=1e-6)
    # the student that outputs the teacher's logits is the soft target's minimiser of the BCE part
    assert PseudoLabelLoss(soft=True)(teacher, teacher) < PseudoLabelLoss(soft=True)(teacher + 1.0, teacher)


def test_the_pseudo_term_sees_only_unlabelled_rows_and_sends_no_gradient_to_the_teacher():
    student = torch.randn(4, 1, 6, 6, requires_grad=True)
    teacher = torch.randn(4, 1, 6, 6, requires_grad=True)
    seen = []
    loss = PseudoLabelLoss()
    loss.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    composite = CompositeLoss({"pseudo": LossTerm(loss, ["network.seg", "teacher.seg"], unlabeled_only=True)})
    total, _ = composite({"seg": student}, {"seg": teacher}, {"labeled": torch.tensor([1, 0, 1, 0])})
    total.backward()
    assert seen == [2]
    assert student.grad[[0, 2]].abs().sum() == 0 and student.grad[[1, 3]].abs().sum() > 0
    assert teacher.grad is None
    none, _ = composite({"seg": student}, {"seg": teacher}, {"labeled": torch.ones(4)})
    assert none.item() == 0.0 and seen == [2]  # no unlabelled slice: the loss is not called
    without_flags, _ = composite({"seg": student}, {"seg": teacher}, {})
    assert without_flags.item() == 0.0  # a run without unlabelled volumes has nothing to pseudo-label
    with pytest.raises(ValueError, match="labeled_only or unlabeled_only, not both"):
        LossTerm(loss, ["network.seg", "teacher.seg"], labeled_only=True, unlabeled_only=True)


@pytest.mark.parametrize("term", ["pseudo", "pseudo_soft"])
def test_pseudo_labels_train_on_images_whose_label_files_do_not_exist(unlabelled_setup, term):
    root, _, images, common = unlabelled_setup
    assert not any("label" in p.name for p in images.iterdir())
    workflow = ConfigWorkflow(config_file=config_files("kd"), meta_file=META_FILE, logging_file=False,
                              workflow_type="train", run_id="training",
                              **{**common, "output_root": str(root / term), "distill": [term], "epochs": 1})
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    values = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: values.append(float(e.state.output["loss_terms"][term])))
    workflow.run()
    assert values and all(v > 0 for v in values)  # every batch holds unlabelled slices with a target
    assert workflow.parser.get_parsed_content("teacher_cache").misses > 0  # targets come through the teacher cache
