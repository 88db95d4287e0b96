"""Networks: paper-size parameter counts and the three named feature taps."""

import pytest
import torch

from bundle.networks import SCALES, FeatureUNet, MeanLogitEnsemble, MultiTaskUNETR, SelectOutputs, count_parameters, from_definition

T1 = dict(channels=(64, 128, 256, 512), bottleneck=1024, convs_per_block=2, reconstruction=True)
S1 = dict(channels=(16, 32), bottleneck=64, convs_per_block=1)
S2 = dict(channels=(16, 32, 64), bottleneck=128, convs_per_block=1)


@pytest.mark.parametrize(
    "kwargs, expected, tolerance",
    [(T1, 43.2e6, 0.01), (S1, 57e3, 0.02), (S2, 227e3, 0.06)],
    ids=["T1", "S1", "S2"],
)
def test_paper_widths_give_the_thesis_parameter_counts(kwargs, expected, tolerance):
    assert count_parameters(FeatureUNet(**kwargs)) == pytest.approx(expected, rel=tolerance)


def test_t2_is_a_vit_teacher_of_about_a_hundred_million_parameters():
    params = count_parameters(MultiTaskUNETR(img_size=256))
    assert 90e6 < params < 180e6


@pytest.mark.parametrize(
    "network",
    [FeatureUNet(channels=(8, 16, 32), bottleneck=64, convs_per_block=2, reconstruction=True),
     FeatureUNet(**S1),
     MultiTaskUNETR(img_size=64, feature_size=8, hidden_size=96, mlp_dim=192, num_layers=4, num_heads=4)],
    ids=["unet-teacher", "S1", "unetr-teacher"],
)
def test_features_match_declared_channels_and_plain_forward_gives_logits(network):
    x = torch.randn(2, 1, 64, 64)
    out = network(x, return_features=True)
    assert out["seg"].shape == (2, 1, 64, 64)
    for scale in SCALES:
        assert out[scale].shape[:2] == (2, network.feature_channels[scale])
    assert out["decoder"].shape[-2:] == (64, 64)
    network.eval()
    with torch.no_grad():
        assert torch.equal(network(x), network(x, return_features=True)["seg"])


def test_teachers_reconstruct_the_input_shape_and_students_do_not():
    teacher = FeatureUNet(channels=(8, 16), bottleneck=16, reconstruction=True)
    assert teacher(torch.randn(1, 1, 32, 32), return_features=True)["rec"].shape == (1, 1, 32, 32)
    assert "rec" not in FeatureUNet(**S1)(torch.randn(1, 1, 32, 32), return_features=True)


def test_select_outputs_gives_seg_and_rec_for_an_inferer():
    teacher = FeatureUNet(channels=(8, 16), bottleneck=16, reconstruction=True).eval()
    seg, rec = SelectOutputs(teacher, ["seg", "rec"])(torch.randn(1, 1, 32, 32))
    assert seg.shape == rec.shape == (1, 1, 32, 32)


def test_unetr_teacher_rejects_image_sizes_that_are_not_patch_multiples():
    with pytest.raises(ValueError, match="multiple of the 16-pixel patch"):
        MultiTaskUNETR(img_size=100)


def test_an_ensemble_averages_its_members_logits_and_rebuilds_from_its_definition():
    torch.manual_seed(0)
    members = [FeatureUNet(channels=(4, 8), bottleneck=8), FeatureUNet(channels=(4, 8), bottleneck=8, stem_stride=2)]
    ensemble = MeanLogitEnsemble(members).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = (members[0](x) + members[1](x)) / 2
        assert torch.allclose(ensemble(x), expected, atol=1e-6)
        assert set(ensemble(x, return_features=True)) == {"seg"}
        assert torch.allclose(ensemble(x, return_features=True)["seg"], expected, atol=1e-6)
        teachers = [FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True) for _ in range(2)]
        both = MeanLogitEnsemble(teachers).eval()(x, return_features=True)
        assert set(both) == {"seg", "rec"}  # image-space outputs only: member features do not correspond
        assert torch.allclose(both["rec"], (teachers[0](x, True)["rec"] + teachers[1](x, True)["rec"]) / 2, atol=1e-6)
        alone = MeanLogitEnsemble(members[:1]).eval()
        assert torch.equal(alone(x), members[0](x))
    # one checkpoint holds every member; the definition model.json records rebuilds the same network
    from bundle.serving.model_info import network_definition

    rebuilt = from_definition(network_definition(ensemble)).eval()
    rebuilt.load_state_dict(ensemble.state_dict())
    assert {k.split(".")[1] for k in ensemble.state_dict()} == {"0", "1"}
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), ensemble(x), atol=1e-6)
    with pytest.raises(ValueError, match="at least one member"):
        MeanLogitEnsemble([])
