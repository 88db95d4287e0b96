"""The config layout: one self-contained base (train.json), small overrides merged on it, and a self-contained
inference.json (MONAI Label reads it alone) that must preprocess exactly as training does."""

import json

import pytest
import torch

from bundle.networks import FeatureUNet
from conftest import CONFIGS, REPO, TINY_STUDENT, TINY_TEACHER, TRAIN, bundle_run, config_files, error_chain

SHARED_WITH_INFERENCE = ("allow_non_ct", "image_loading", "image_to_network")
DESCRIBED = ("hu_window", "axcodes", "pixdim", "slice_size")  # inference.json reads them from the model's description


def _raw(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _strings(node):
    """Every string in a JSON document, keys included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_no_config_links_to_another_file():
    """train.json is self-contained and committed by hand (no generator): no config may pull content from
    another file (``%configs/...``), which would only resolve from the repository as working directory."""
    files = sorted(CONFIGS.rglob("*.json"))
    assert CONFIGS / "train.json" in files and CONFIGS / "inference.json" in files
    for path in files:
        text = path.read_text()
        assert "%configs/" not in text, path
        linked = [s for s in _strings(json.loads(text)) if s.startswith("%") and not s.startswith("%#")]
        assert not linked, f"{path.name} links to other files: {linked}"
    train = _raw("train")
    assert train["training"] == "%#run" and isinstance(train["run"], list)
    for name in ("bundle_root", "output_root", "run_name", "model_dir", "ckpt_dir", "output_dir", "served_model"):
        assert name in train, name


def test_inference_preprocesses_as_training_does_and_serves_the_student():
    """inference.json cannot merge train.json (MONAI Label reads it alone), so the copies must agree."""
    from bundle.serving import model_info

    inference, train = _raw("inference"), _raw("train")
    for key in SHARED_WITH_INFERENCE:
        assert inference[key] == train[key], key
    assert inference["image_preprocessing"] == train["image_preprocessing"]
    # what a checkpoint without a description is served with: train.json's own settings
    for key in DESCRIBED:
        trained_with = train[key] if key != "slice_size" else \
            f"$bundle.serving.model_info.described(@served_model, 'slice_size', {model_info.DEFAULTS[key]})"
        assert inference[key] == f"$@model_info['{key}']" and train[key] == trained_with, key
        if key != "slice_size":
            assert model_info.DEFAULTS[key] == train[key], key
    trained = dict(train["student_def"])
    assert trained.pop("stem_stride") == "$bundle.serving.model_info.described(@served_model, 'network_def', {})" \
        ".get('stem_stride', 1)"  # the served model's student when training into its folder
    assert model_info.DEFAULTS["network_def"] == trained
    assert "@model_info['network_def']" in inference["network_def"]


def test_training_into_a_served_models_folder_trains_that_models_student(tmp_path):
    """MONAI Label fine-tunes ``models/model.pt`` through train.json: the student it trains must be the served
    one (S1 and S1-fast share their parameter shapes, so loading the weights alone would not tell), while a
    fresh output folder trains train.json's S1."""
    from monai.bundle import ConfigParser

    from bundle.serving import model_info
    from bundle.workflows import network_definition

    def student(output_root):
        parser = ConfigParser()
        parser.read_config(TRAIN)
        parser.update({"bundle_root": str(REPO), "output_root": str(output_root)})
        return parser.get_parsed_content("network")

    served = tmp_path / "served" / "models" / "model.pt"
    served.parent.mkdir(parents=True)
    fast = FeatureUNet(channels=(16, 32), bottleneck=64, convs_per_block=1, stem_stride=2)
    torch.save(fast.state_dict(), served)
    model_info.write(served, fast, slice_size=128)
    assert student(tmp_path / "served").stem_stride == 2
    assert student(tmp_path / "fresh").stem_stride == 1
    definition = network_definition([str(TRAIN)], "student", {"output_root": str(tmp_path / "served")})
    assert definition["stem_stride"] == 2  # resolved, not the config's expression


def _case(request, name):
    if name == "phantom":
        phantom_dir = request.getfixturevalue("phantom_dir")
        image = sorted((phantom_dir / "imagesTr").glob("*.nii.gz"))[0]
        return {"image": str(image), "label": str(phantom_dir / "labelsTr" / image.name)}
    totalseg_dir = request.getfixturevalue("totalseg_dir")
    if name == "dicom":
        return {"image": str(totalseg_dir / "example_ct_dicom"), "label": str(totalseg_dir / "example_seg_dicom.nii.gz")}
    return {"image": str(totalseg_dir / "example_ct_sm.nii.gz"), "label": str(totalseg_dir / "example_seg.nii.gz")}


@pytest.mark.parametrize("case, overrides", [
    ("nifti", {}),
    ("nifti", {"pixdim": [1.5, 1.5, 4.0], "slice_size": 96}),
    ("dicom", {"slice_size": 128}),
    ("phantom", {"hu_window": [-100, 200]}),
])
def test_training_and_image_chains_give_the_network_the_same_image(case, overrides, request):
    """``preprocessing_3d`` (image + label, training and validation) and ``image_preprocessing`` (image only,
    evaluation and inference) are written separately: the image they hand the network must be the same."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    data = _case(request, case)
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": str(REPO), **overrides})
    joint = Compose(parser.get_parsed_content("preprocessing_3d"))(dict(data))["image"]
    alone = Compose(parser.get_parsed_content("image_preprocessing"))({"image": data["image"]})["image"]
    assert joint.shape == alone.shape and joint.shape[1:3] == (parser.get_parsed_content("slice_size"),) * 2
    assert joint.dtype == alone.dtype == torch.float32
    assert torch.allclose(joint.as_tensor(), alone.as_tensor(), atol=1e-6)
    assert torch.allclose(joint.affine, alone.affine, atol=1e-5)
    assert 0.0 <= alone.min().item() and alone.max().item() <= 1.0 and alone.max().item() > 0.5


def test_an_unknown_distillation_term_names_distill_and_the_terms_there_are(phantom_dir, tmp_path):
    torch.save(FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True).state_dict(), tmp_path / "teacher.pt")
    with pytest.raises(Exception) as error:
        bundle_run("training", config_files("kd"), output_root=str(tmp_path), dataset_dir=str(phantom_dir),
                   slice_size=32, epochs=1, slices_per_volume=2, teacher_def=TINY_TEACHER, student_def=TINY_STUDENT,
                   teacher_ckpt=str(tmp_path / "teacher.pt"), amp=False, distill=["pmd", "infonce_encodr"])
    message = error_chain(error.value)
    assert "`distill`" in message and "'infonce_encodr'" in message
    for term in ("pmd", "cwd", "dist", "infonce_encoder", "mse_bottleneck", "region_affinity_encoder"):
        assert f"'{term}'" in message, term
    assert not (tmp_path / "models/kd/training_state.pt").exists()


def test_kd_default_recipe_is_the_alternatives_studys_choice_by_its_fixed_rule():
    """kd.json distils with the terms, and the unlabelled volumes, of the arm that the alternatives study's
    rule (fixed before its last seeds ran) chooses: the best candidate by mean test Dice unless DIST with
    unlabelled volumes is significantly better than it."""
    from monai.bundle import ConfigParser

    results = json.loads((REPO / "docs/results/alternatives.json").read_text())
    grid = json.loads((CONFIGS / "experiments" / "alternatives.json").read_text())
    candidates = ["dist+unl", "pseudo", "pseudo-soft", "dist+unl+pseudo", "thesis+unl"]
    assert results["seeds"] == grid["seeds"] and all(len(results["arms"][a]["seeds"]) == 5 for a in candidates)
    chosen = max(candidates, key=lambda a: results["arms"][a]["dice_mean"])
    against = results["default_decision"].get(f"{chosen} vs dist+unl")
    if against and against["gain"] < 0 and against["p"] < 0.05:
        chosen = "dist+unl"
    assert results["default_decision"]["default"] == chosen
    best = grid["variants"][chosen]
    best = best if isinstance(best, dict) else {"terms": best}
    assert _raw("kd")["distill"] == best["terms"]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "kd.json")])
    parser.update({"bundle_root": str(REPO), **grid["overrides"]})
    for key in set(best.get("overrides", {})) | {"use_unlabeled"}:
        parser[key] = _raw("kd").get(key, _raw("train").get(key))  # the configs' default, not the grid's
        used = best.get("overrides", {}).get(key, grid["overrides"].get(key))
        assert parser.get_parsed_content(key) == used, key


def test_unlabelled_volumes_are_on_by_default_only_when_the_student_has_fewer_volumes_than_the_teacher():
    from monai.bundle import ConfigParser

    for fraction, expected in ((0.5, True), (1.0, False)):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "kd.json")])
        parser.update({"bundle_root": str(REPO), "student_fraction": fraction})
        assert parser.get_parsed_content("use_unlabeled") is expected


@pytest.mark.parametrize("files, key, off", [
    (["train"], "train#dataset#transform", {"augment": "false"}),
    (["train", "kd"], "train#unlabeled_dataset#transform", {"augment": "false"}),
])
def test_switches_given_as_false_on_the_command_line_are_off(files, key, off):
    """`--augment false` reaches the config as the string "false"; the augmentation must stay out."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f"{name}.json") for name in files])
    parser.update({"bundle_root": str(REPO), **off})
    names = [type(t).__name__ for t in parser.get_parsed_content(key).transforms]
    assert "RandGaussianNoised" not in names


def test_largest_component_false_from_the_command_line_keeps_every_component():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(REPO), "largest_component": "false"})
    names = [type(t).__name__ for t in parser.get_parsed_content("postprocessing").transforms]
    assert "LargestComponentd" not in names and names[-1] == "SaveImaged"


@pytest.mark.parametrize("files, keys", [
    (["train"], ["train#trainer#amp", "validate#evaluator#amp"]),
    (["train", "evaluate"], ["evaluator#amp"]),
    (["inference"], ["evaluator#amp"]),
])
@pytest.mark.parametrize("given, expected", [("false", False), ("true", True), (False, False)])
def test_amp_given_on_the_command_line_is_a_boolean(files, keys, given, expected):
    """`--amp false` on a CUDA machine arrives as the string "false"; the engines must not take it as true."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f"{name}.json") for name in files])
    parser.update({"bundle_root": str(REPO), "amp": given})
    for key in keys:
        assert parser.get_parsed_content(key) is expected, key


def test_use_unlabeled_false_from_the_command_line_adds_no_unlabelled_volumes():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "kd.json")])
    parser.update({"bundle_root": str(REPO), "use_unlabeled": "false", "datalist": {"teacher_train": [], "student_train": []}})
    assert parser.get_parsed_content("train#unlabeled_dataset#data") == []
