"""The composed-loss trainer: term wiring, the frozen teacher, per-term logging, the teacher cache."""

import pytest
import torch
from monai.inferers import SimpleInferer
from torch import nn
from torch.utils.data import DataLoader

from bundle.engine import ComposedLossTrainer, loss_logs
from bundle.losses.composite import CompositeLoss, LossTerm
from bundle.networks import FeatureUNet
from bundle.teacher import TeacherCache


def _loader(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    labels = (images > 0.6).float()
    return DataLoader([{"image": i, "label": l} for i, l in zip(images, labels)], batch_size=4)


def _student():
    return FeatureUNet(channels=(4, 8), bottleneck=8)


def _teacher():
    torch.manual_seed(1)
    return FeatureUNet(channels=(8, 16), bottleneck=16, reconstruction=True)


def _trainer(student, loss, teacher=None, cache=None, epochs=2):
    optimizer = torch.optim.SGD(list(student.parameters()) + list(loss.parameters()), lr=0.1)
    return ComposedLossTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=_loader(),
                               network=student, optimizer=optimizer, loss_function=loss, teacher=teacher,
                               teacher_cache=cache, decollate=False)


def test_loss_term_rejects_malformed_addresses_naming_the_valid_forms():
    with pytest.raises(ValueError, match="'seg' must look like 'network.seg', 'teacher.encoder' or 'batch.label'"):
        LossTerm(nn.MSELoss(), ["seg", "batch.label"])
    with pytest.raises(ValueError, match=r"source one of \('network', 'teacher', 'batch'\)"):
        LossTerm(nn.MSELoss(), ["model.seg", "batch.label"])
    with pytest.raises(ValueError, match="'student.seg' must look like"):  # a config naming the old source fails loudly
        LossTerm(nn.MSELoss(), ["student.seg", "batch.label"])


def test_loss_term_names_the_missing_output():
    term = LossTerm(nn.MSELoss(), ["network.rec", "batch.image"])
    with pytest.raises(KeyError, match=r"network.rec.*provides only \['seg'\]"):
        term({"network": {"seg": torch.zeros(1)}, "teacher": None, "batch": {"image": torch.zeros(1)}})


def test_composite_loss_is_the_weighted_sum_of_its_terms():
    network = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([0.0, 0.0])}
    batch = {"t": torch.tensor([0.0, 1.0])}
    loss = CompositeLoss({
        "first": LossTerm(nn.MSELoss(), ["network.a", "batch.t"], weight=2.0),   # mean(1, 4) = 2.5
        "second": LossTerm(nn.L1Loss(), ["network.b", "batch.t"], weight=0.5),   # mean(0, 1) = 0.5
    })
    total, terms = loss(network, None, batch)
    assert terms == {"first": pytest.approx(2.5), "second": pytest.approx(0.5)}
    assert total.item() == pytest.approx(2.0 * 2.5 + 0.5 * 0.5)
    assert loss_logs({"loss": total, "loss_terms": terms}) == {
        "loss": pytest.approx(5.25), "loss_first": pytest.approx(2.5), "loss_second": pytest.approx(0.5)}


def test_teacher_terms_without_a_teacher_fail_at_construction():
    loss = CompositeLoss({"kd": LossTerm(nn.MSELoss(), ["network.seg", "teacher.seg"])})
    with pytest.raises(ValueError, match="no `teacher` was given"):
        _trainer(_student(), loss)


def test_distillation_keeps_the_teacher_bit_identical_and_trains_the_student():
    teacher, student = _teacher(), _student()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    loss = CompositeLoss({
        "seg": LossTerm(nn.BCEWithLogitsLoss(), ["network.seg", "batch.label"]),
        "kd": LossTerm(nn.MSELoss(), ["network.seg", "teacher.seg"], weight=0.5),
    })
    trainer = _trainer(student, loss, teacher=teacher)
    teacher.train()  # the trainer must put it back in eval mode itself
    trainer.run()
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k  # weights and BatchNorm running stats
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    assert set(trainer.state.metrics) >= {"loss_seg", "loss_kd"}
    assert set(trainer.state.output["loss_terms"]) == {"seg", "kd"}


def test_teacher_cache_gives_the_same_outputs_and_hits_on_repeated_slices():
    teacher = _teacher().eval()
    images = torch.rand(4, 1, 32, 32)
    cache = TeacherCache(max_megabytes=16)
    with torch.no_grad():
        direct = teacher(images, return_features=True)
        first = cache.outputs(teacher, images, {"seg", "encoder"})
        second = cache.outputs(teacher, images[[2, 0]], {"seg", "encoder"})
    assert set(first) == {"seg", "encoder"}
    assert torch.allclose(first["encoder"], direct["encoder"], atol=1e-6)
    assert torch.allclose(second["seg"], direct["seg"][[2, 0]], atol=1e-6)
    assert (cache.misses, cache.hits, len(cache)) == (4, 2, 4)


def test_teacher_cache_respects_its_memory_bound():
    teacher = _teacher().eval()
    cache = TeacherCache(max_megabytes=1.5 * 32 * 32 * 4 / 2**20)  # room for one seg map of 32x32 float32
    with torch.no_grad():
        out = cache.outputs(teacher, torch.rand(3, 1, 32, 32), {"seg"})
    assert out["seg"].shape == (3, 1, 32, 32)
    assert len(cache) == 1 and cache.bytes <= cache.max_bytes


def test_cached_and_uncached_distillation_train_the_same_student():
    runs = []
    for cache in (None, TeacherCache()):
        torch.manual_seed(0)
        student = _student()
        loss = CompositeLoss({"kd": LossTerm(nn.MSELoss(), ["network.seg", "teacher.seg"])})
        _trainer(student, loss, teacher=_teacher(), cache=cache, epochs=3).run()
        runs.append(student.state_dict())
    for k in runs[0]:
        assert torch.allclose(runs[0][k].float(), runs[1][k].float(), atol=1e-5), k


def test_epoch_means_of_the_terms_are_those_of_the_epoch_just_finished():
    seen = []
    loss = CompositeLoss({"seg": LossTerm(nn.BCEWithLogitsLoss(), ["network.seg", "batch.label"])})
    trainer = _trainer(_student(), loss, epochs=2)
    per_iteration = []
    from ignite.engine import Events
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: per_iteration.append(float(e.state.output["loss_terms"]["seg"])))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.metrics["loss_seg"]))
    trainer.run()
    assert seen == pytest.approx([sum(per_iteration[:2]) / 2, sum(per_iteration[2:]) / 2])


class _SpyScaler(torch.amp.GradScaler):
    """A real (CPU) gradient scaler that counts how often the trainer scales a loss."""

    def __init__(self):
        super().__init__("cpu")
        self.scaled = 0

    def scale(self, outputs):
        self.scaled += 1
        return super().scale(outputs)


@pytest.mark.parametrize("dtype, scaled_steps", [(torch.float16, 4), (torch.bfloat16, 0)])
def test_fp16_amp_scales_every_loss_with_the_scaler_monai_creates_in_run(monkeypatch, dtype, scaled_steps):
    """MONAI creates the scaler inside ``Trainer.run()``: deciding in ``__init__`` saw None and never scaled."""
    spies = []
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", lambda *a, **k: spies.append(_SpyScaler()) or spies[-1])
    loss = CompositeLoss({"seg": LossTerm(nn.BCEWithLogitsLoss(), ["network.seg", "batch.label"])})
    student = _student()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    trainer = ComposedLossTrainer(device=torch.device("cpu"), max_epochs=2, train_data_loader=_loader(),
                                  network=student, optimizer=optimizer, loss_function=loss, decollate=False,
                                  amp=True, amp_kwargs={"dtype": dtype})
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.run()
    assert len(spies) == 1 and trainer.scaler is spies[0]
    assert spies[0].scaled == scaled_steps  # 2 epochs x 2 batches for fp16; bf16 needs no scaling
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())  # steps were taken


@pytest.mark.parametrize("name, value", [("accumulation_steps", 4), ("compile", True), ("inferer", SimpleInferer())])
def test_trainer_refuses_supervised_trainer_options_it_does_not_honour(name, value):
    loss = CompositeLoss({"seg": LossTerm(nn.BCEWithLogitsLoss(), ["network.seg", "batch.label"])})
    student = _student()
    with pytest.raises(ValueError, match=rf"does not support `{name}=.*remove `{name}` from the trainer config"):
        ComposedLossTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=_loader(), network=student,
                            optimizer=torch.optim.SGD(student.parameters(), lr=0.1), loss_function=loss,
                            **{name: value})


def test_teacher_cache_stores_a_repeated_slice_once_and_counts_only_what_it_holds():
    teacher = _teacher().eval()
    images = torch.rand(2, 1, 32, 32)
    cache = TeacherCache(max_megabytes=16)
    with torch.no_grad():
        direct = teacher(images, return_features=True)
        out = cache.outputs(teacher, images[[0, 1, 0, 0]], {"seg", "encoder"})
    assert torch.allclose(out["encoder"], direct["encoder"][[0, 1, 0, 0]], atol=1e-6)
    assert (cache.misses, cache.hits, len(cache)) == (2, 2, 2)
    per_slice = sum(direct[k][0].numel() * direct[k].element_size() for k in ("seg", "encoder"))
    assert cache.bytes == 2 * per_slice
    # each entry owns exactly its row: no view that keeps the whole batch's output tensor alive
    held = sum(v.untyped_storage().nbytes() for entry in cache._entries.values() for v in entry.values())
    assert held == cache.bytes


def test_the_trainer_ramps_a_warm_up_term_with_the_progress_it_reports():
    """kd weight 1 with a 2-epoch warm-up, 2 iterations per epoch: the weights used are 0, 1/4, 1/2, 3/4
    (the progress at each iteration's start), so the total is that share of the raw term."""
    from ignite.engine import Events

    loss = CompositeLoss({"kd": LossTerm(nn.MSELoss(), ["network.seg", "teacher.seg"], warmup_epochs=2)})
    trainer = _trainer(_student(), loss, teacher=_teacher(), epochs=2)
    shares = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: shares.append(
        float(e.state.output["loss"]) / float(e.state.output["loss_terms"]["kd"])))
    trainer.run()
    assert shares == pytest.approx([0.0, 0.25, 0.5, 0.75], abs=1e-6)


def test_teacher_cache_tells_apart_real_sized_slices_that_share_their_first_rows():
    """Windowed CT slices begin with identical rows of air: a key on the first bytes would hand one
    slice's teacher outputs to another."""
    teacher = _teacher().eval()
    slices = torch.zeros(3, 1, 256, 256)  # 256 KB each; the first 64 rows (64 KB) all air
    slices[0, :, 100:150, 80:120] = 0.6
    slices[1, :, 180:220, 140:200] = 0.8
    slices[2, :, 255, 255] = 0.1  # only the last pixel differs from an all-air slice
    cache = TeacherCache(max_megabytes=64)
    with torch.no_grad():
        direct = teacher(slices, return_features=True)["seg"]
        cache.outputs(teacher, slices, {"seg"})
        again = cache.outputs(teacher, slices.flip(0), {"seg"})["seg"]
    assert len({TeacherCache.key(s) for s in slices} | {TeacherCache.key(torch.zeros(1, 256, 256))}) == 4
    assert (cache.misses, cache.hits) == (3, 3)
    assert torch.allclose(again, direct.flip(0), atol=1e-6)
