"""Synthetic CT from real label maps: determinism, exact labels, plausible HU, contrast phases, real spleens
placed and rescaled, lesions, acquisition (partial volume, cut fields of view), the HU statistics, the CLI."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.data.assets import DEFAULT_SPLEEN_MASKS, TOTALSEG_SOURCES
from bundle.data.datalist import DataError, check_pairs, read_pairs
from bundle.data.synthetic import (SPLEEN, SPLEEN_LESION, TOTALSEGMENTATOR_CLASSES, Acquisition, CaseOptions,
                                   _phase_means, _place_spleen, _sub_slice_offsets, _warp, label_names,
                                   load_contrast_phases, load_hu_stats, load_source, make_synthetic_case,
                                   make_synthetic_dataset, phase_group, synthesize_case, tissue_group)

# small coarse cases: a second or less each
FAST = {"matrix_share": 0.0, "inplane_spacing_mm": (2.5, 3.0), "slice_thickness_mm": (3.0, 5.0), "max_slices": 12}


@pytest.fixture(scope="module")
def dataset_dir() -> Path:
    return TOTALSEG_SOURCES


@pytest.fixture(scope="module")
def source_map(dataset_dir) -> str:
    return str(dataset_dir / "s0006_labels.nii.gz")


def _nifti(path: Path, array: np.ndarray, spacing=(2.0, 2.0, 3.0)) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return path


def _write(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_dataset_naming_matches_labels_json(dataset_dir):
    names = label_names("dataset")
    assert {value: name for name, value in json.loads((dataset_dir / "labels.json").read_text()).items()} == names
    assert label_names("totalsegmentator")[1] == "spleen" and label_names("totalsegmentator")[5] == "liver"
    assert len(TOTALSEGMENTATOR_CLASSES) == len(set(TOTALSEGMENTATOR_CLASSES)) == 117
    with pytest.raises(ValueError, match="unknown label naming"):
        label_names("alphabetical")


def test_hu_stats_fall_back_to_the_tissue_group(tmp_path):
    measured = {"pooled": {"spleen": {"median": 100.0, "spread": 20.0},
                           "rib_left_1": {"median": 500.0, "spread": 200.0},
                           "rib_left_2": {"median": 300.0, "spread": 100.0}}}
    stats = load_hu_stats(_write(tmp_path / "stats.json", measured))
    assert stats["spleen"] == (100.0, 20.0)
    assert stats["rib_right_7"] == (400.0, 150.0)  # median of the measured ribs
    assert tissue_group("rib_right_7") == "bone" and tissue_group("aorta") == "vessel"
    assert stats["lung_upper_lobe_left"][0] < -700  # no lung measured: the textbook prior
    with pytest.raises(ValueError, match="spleen-kd measure-hu"):
        load_hu_stats(tmp_path / "missing.json")


def test_committed_hu_stats_are_plausible_and_not_measured_on_the_fixtures():
    stats = load_hu_stats()
    assert -150 < stats["unlabelled_fat"][0] < -50 and 20 < stats["autochthon_left"][0] < 80
    assert stats["vertebrae_L1"][0] > 100 and stats["lung_lower_lobe_left"][0] < -600
    measured_on = json.loads((Path(load_hu_stats.__globals__["HU_STATS_FILE"])).read_text())["subjects"]
    assert set(measured_on) == {"s0002", "s0003"}  # the two CTs without a spleen, never the real fixtures


def test_contrast_phases_cover_clinical_ct_and_draw_organs_independently():
    phases = load_contrast_phases()["phases"]
    assert set(phases) == {"unenhanced", "arterial", "portal_venous", "delayed"}
    assert phases["portal_venous"]["spleen"][0] >= 100 and phases["portal_venous"]["spleen"][1] >= 170
    assert phases["unenhanced"]["spleen"][1] <= 60 and "spleen_stripes" in phases["arterial"]
    assert phase_group("aorta") == "artery" and phase_group("portal_vein_and_splenic_vein") == "portal"
    assert phase_group("inferior_vena_cava") == "vein" and phase_group("kidney_cyst_left") is None
    names, stats = label_names("dataset"), load_hu_stats()
    liver = next(v for v, n in names.items() if n == "liver")
    only = {"phases": {"portal_venous": {**phases["portal_venous"], "weight": 1.0}}}
    order = set()
    for seed in range(40):
        phase, mean, _ = _phase_means(np.random.default_rng(seed), names, stats, only)
        assert phase == "portal_venous"
        assert 90 <= mean[SPLEEN] <= 190 and mean[SPLEEN_LESION] == mean[SPLEEN]
        order.add(bool(mean[liver] > mean[SPLEEN]))
    assert order == {True, False}, "the liver must lie above the spleen in some portal-venous cases, below in others"


def test_measure_hu_stats_recovers_known_values(tmp_path):
    from bundle.data.hu_measure import measure_subject

    rng = np.random.default_rng(0)
    label = np.zeros((40, 40, 12), dtype=np.uint8)
    label[5:20, 5:35, 2:10] = 1
    label[22:36, 5:35, 2:10] = 2
    image = np.where(label == 1, 110.0, np.where(label == 2, 55.0, -1000.0)) + rng.normal(0, 10, label.shape)
    image[(label == 2) & (np.arange(40)[:, None, None] == 22)] = 400  # a bright border the erosion must drop
    stats = measure_subject(_nifti(tmp_path / "ct.nii.gz", image.astype(np.int16)),
                            _nifti(tmp_path / "seg.nii.gz", label), {1: "spleen", 2: "liver"})
    assert abs(stats["spleen"]["median"] - 110) < 3 and abs(stats["spleen"]["spread"] - 10) < 2
    assert abs(stats["liver"]["median"] - 55) < 3 and stats["liver"]["spread"] < 12


def test_identity_warp_carries_labels_exactly(source_map):
    source = load_source(source_map)
    shape = source.labels.shape
    identity = Acquisition(shape, source.spacing, (np.array(shape) - 1) / 2 * source.spacing, np.eye(3), 0.0, 50.0)
    labels, distance = _warp(np.random.default_rng(0), source, identity)
    np.testing.assert_array_equal(labels, source.labels)
    assert np.median(distance[source.labels == 1]) == 0  # organs lie inside the body core


def test_rotated_warp_keeps_label_values_and_spleen_volume(source_map):
    """Nearest-neighbour sampling: no value the source lacks, and a rigid turn keeps the spleen's volume."""
    source = load_source(source_map)
    turn = np.radians(10.0)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    shape = tuple(int(n * 1.3) for n in source.labels.shape[:2]) + (source.labels.shape[2],)
    centre = (np.array(source.labels.shape) - 1) / 2 * source.spacing + 0.5 * source.spacing  # off the voxel centres
    rotated = Acquisition(shape, source.spacing, centre, rotation, 0.0, 50.0)
    labels, _ = _warp(np.random.default_rng(0), source, rotated)
    assert set(np.unique(labels)) <= set(np.unique(source.labels)) | {0}
    assert abs(int((labels == 1).sum()) / int((source.labels == 1).sum()) - 1) < 0.06  # nearest on a 1.5 mm grid


def test_sub_slices_of_thick_slices_are_symmetric_and_thin_slices_have_one():
    assert list(_sub_slice_offsets(1.0)) == [0.0]
    for thickness in (3.0, 5.0, 8.0):
        offsets = _sub_slice_offsets(thickness)
        assert len(offsets) % 2 == 1 and len(offsets) >= 3 and offsets[len(offsets) // 2] == 0
        np.testing.assert_allclose(offsets, -offsets[::-1])
        assert -0.5 < offsets[0] and offsets[-1] < 0.5  # inside the slice
        assert thickness / len(offsets) <= 1.7  # about 1.25 mm apart


def test_a_real_spleen_replaces_the_sources_own_at_the_drawn_volume(source_map):
    source = load_source(source_map)
    bone = np.isin(source.labels, [v for v, n in source.names.items() if tissue_group(n) == "bone"])
    assert not np.any(source.spleen_free == SPLEEN)  # the own spleen's space is taken by its neighbours
    assert np.all(source.spleen_free[bone] == source.labels[bone])
    for seed, ml in ((0, 60.0), (1, 400.0)):
        options = CaseOptions(real_mask_share=1.0, spleen_ml=(ml, ml), lesion_share=0.0, accessory_share=0.0)
        labels, drawn = _place_spleen(np.random.default_rng(seed), source, options)
        assert drawn["spleen_mask"] in {p.name for p in DEFAULT_SPLEEN_MASKS}
        spleen_ml = (labels == SPLEEN).sum() * np.prod(source.spacing) / 1000
        assert 0.8 * ml < spleen_ml <= 1.05 * ml, (seed, spleen_ml)  # bone it would cover stays bone
        assert np.all(labels[bone] == source.labels[bone])
    own = CaseOptions(real_mask_share=0.0, spleen_ml=(100.0, 100.0), lesion_share=0.0, accessory_share=0.0)
    labels, drawn = _place_spleen(np.random.default_rng(0), source, own)
    assert drawn["spleen_mask"] == "own"


def test_lesions_lie_inside_the_spleen_label_and_are_darker(source_map):
    source, stats = load_source(source_map), load_hu_stats()
    options = {**FAST, "lesion_share": 1.0, "random_contrast_share": 0.0, "spleen_ml": (300.0, 400.0)}
    found = False
    for seed in range(4):
        labels, drawn = _place_spleen(np.random.default_rng(seed), source, CaseOptions.of(options))
        lesion = labels == SPLEEN_LESION
        assert drawn["lesions"] >= 1 and lesion.any()
        image, label, _, drawn = synthesize_case((5, seed), source, stats, options)
        if drawn["lesions"] and label.sum() > 200:
            found = True
        assert label.max() == 1 and set(np.unique(label)) <= {0, 1}
    assert found


def test_views_that_cut_the_spleen_touch_the_image_border(source_map):
    source, stats = load_source(source_map), load_hu_stats()
    for seed in range(3):
        _, label, _, drawn = synthesize_case((2, seed), source, stats, {**FAST, "tip_only_share": 1.0, "max_slices": 40})
        assert drawn["view"] in ("tip", "dome") and label.any()
        assert label[:, :, -1].any() if drawn["view"] == "tip" else label[:, :, 0].any(), drawn
        _, label, _, drawn = synthesize_case((3, seed), source, stats, {**FAST, "cut_fov_share": 1.0})
        assert drawn["fov_cut"] and label.any()
        edges = [label[0], label[-1], label[:, 0], label[:, -1]]
        assert any(edge.any() for edge in edges), "the spleen must run out of the in-plane field of view"


def test_metal_changes_the_image_not_the_label_and_random_contrast_is_recorded(source_map):
    source, stats = load_source(source_map), load_hu_stats()
    plain = synthesize_case((4, 0), source, stats, {**FAST, "streak_share": 0.0, "metal_share": 0.0})
    metal = synthesize_case((4, 0), source, stats, {**FAST, "streak_share": 0.0, "metal_share": 1.0})
    np.testing.assert_array_equal(plain[1], metal[1])
    assert metal[3]["streaks"] == "metal" and metal[0].max() >= 1500 and not np.array_equal(plain[0], metal[0])
    _, _, _, drawn = synthesize_case((4, 1), source, stats, {**FAST, "random_contrast_share": 1.0})
    assert drawn["phase"] == "random"
    with pytest.raises(ValueError, match="unknown synthetic case options.*matrixx"):
        synthesize_case((4, 2), source, stats, {"matrixx": 3})


def test_clinical_grids_are_512_square_and_thick_slices_average_their_slab(source_map):
    source, stats = load_source(source_map), load_hu_stats()
    image, label, affine, drawn = synthesize_case((6, 0), source, stats, {"matrix_share": 1.0, "max_slices": 8,
                                                                         "slice_thickness_mm": (7.5, 8.0),
                                                                         "cut_fov_share": 0.0, "tip_only_share": 0.0})
    assert image.shape[:2] == (512, 512) and 0.4 <= affine[0, 0] <= 1.0 and affine[2, 2] >= 7.5
    assert label.any() and image.dtype == np.int16


def test_same_seed_same_case_and_the_spleen_on_the_left(source_map):
    source, stats = load_source(source_map), load_hu_stats()
    image, label, affine = make_synthetic_case((0, 1), source, stats, **FAST)
    again = make_synthetic_case((0, 1), source, stats, **FAST)
    other = make_synthetic_case((1, 1), source, stats, **FAST)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(label, again[1])
    assert image.shape != other[0].shape or not np.array_equal(image, other[0])
    assert image.dtype == np.int16 and label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    assert image.shape == label.shape and 2.5 <= affine[0, 0] <= 3.0 and 3.0 <= affine[2, 2] <= 5.0
    # RAS: the spleen is on the patient's left, i.e. at low x, left of the body's centre.
    body_x = np.flatnonzero((image > -500).any(axis=(1, 2)))
    assert np.argwhere(label)[:, 0].mean() < (body_x[0] + body_x[-1]) / 2


def test_hu_ranges_are_those_of_ct(source_map):
    source, stats = load_source(source_map), load_hu_stats()
    for case in range(3):
        image, label, _ = make_synthetic_case((7, case), source, stats, **FAST)
        assert image.min() >= -1024 and image.max() <= 3071
        spleen = np.median(image[label == 1])
        assert -10 < spleen < 220, f"spleen at {spleen} HU"
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
        body = image[image > -500]
        assert np.median(corners) < -900  # air outside the body (the reconstruction circle or a crop)
        assert np.mean((body > -150) & (body < -50)) > 0.03  # fat
        assert np.mean((body > 20) & (body < 200)) > 0.2  # enhanced and unenhanced soft tissue


def test_dataset_is_msd_layout_and_checks_pass(tmp_path, source_map):
    out = tmp_path / "synthetic"
    description = make_synthetic_dataset(out, cases=2, seed=3, sources=[source_map], **FAST)
    content = json.loads(description.read_text())
    assert content["name"] == "SpleenSynthetic" and content["numTraining"] == 2
    info = check_pairs(read_pairs(dataset_dir=out))
    assert len(info) == 2 and all(case["spleen_voxels"] > 0 for case in info)
    first = nib.load(out / "imagesTr" / "spleen_0.nii.gz").get_fdata()
    make_synthetic_dataset(tmp_path / "again", cases=1, seed=3, sources=[source_map], **FAST)
    np.testing.assert_array_equal(first, nib.load(tmp_path / "again" / "imagesTr" / "spleen_0.nii.gz").get_fdata())


def test_bad_input_names_the_file(tmp_path, source_map):
    with pytest.raises(DataError, match="nowhere.nii.gz"):
        make_synthetic_dataset(tmp_path / "a", cases=1, sources=[str(tmp_path / "nowhere.nii.gz")])
    no_spleen = _nifti(tmp_path / "no_spleen.nii.gz", np.full((8, 8, 8), 5, dtype=np.uint8))
    with pytest.raises(ValueError, match="no_spleen.nii.gz"):
        make_synthetic_dataset(tmp_path / "b", cases=1, sources=[str(no_spleen)])
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"name": "Task09_Spleen"}))
    with pytest.raises(DataError, match="another dataset"):
        make_synthetic_dataset(other, cases=1, sources=[source_map])


def test_cli_writes_the_dataset_and_resumes(tmp_path, source_map, capsys):
    from bundle.cli import main

    argv = ["synthesize", "--out", str(tmp_path / "cli"), "--cases", "2", "--seed", "0", "--sources", source_map,
            "--matrix_share", "0", "--inplane_spacing", "2.5", "3.0", "--slice_thickness", "3", "5", "--max_slices", "8"]
    assert main(argv) == 0
    assert (tmp_path / "cli" / "labelsTr" / "spleen_1.nii.gz").is_file()
    content = json.loads((tmp_path / "cli" / "dataset.json").read_text())
    assert content["licence"] == "CC BY-SA 4.0" and "Decathlon" in content["reference"]
    assert json.loads((tmp_path / "cli" / "cases" / "spleen_0.json").read_text())["phase"]
    assert "wrote 2 synthetic CT volumes" in capsys.readouterr().out
    written = (tmp_path / "cli" / "imagesTr" / "spleen_0.nii.gz").stat().st_mtime_ns
    assert main(argv) == 0  # a rerun keeps the cases it finds
    assert (tmp_path / "cli" / "imagesTr" / "spleen_0.nii.gz").stat().st_mtime_ns == written


def test_on_the_fly_transform_draws_new_cases_that_train_like_files(source_map):
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, Orientationd, RandCropByPosNegLabeld, Resized, ScaleIntensityRanged

    from bundle.data.synthetic import RandSyntheticCTd

    synthesize = RandSyntheticCTd(**FAST)
    pipeline = Compose([synthesize, Orientationd(["image", "label"], "RAS"),
                        ScaleIntensityRanged("image", -57, 164, 0.0, 1.0, clip=True),
                        Resized(["image", "label"], [48, 48, -1], mode=["area", "nearest"]),
                        RandCropByPosNegLabeld(["image", "label"], "label", [48, 48, 1], pos=1, neg=0, num_samples=2)])
    pipeline.set_random_state(seed=0)
    batches = list(DataLoader(Dataset([{"source": source_map}] * 2, pipeline), batch_size=2, num_workers=0))
    assert all(b["image"].shape == (4, 1, 48, 48, 1) and b["label"].sum() > 0 for b in batches)  # pos crops
    first, second = synthesize({"source": source_map}), synthesize({"source": source_map})
    assert first["image"].shape != second["image"].shape or not np.array_equal(first["image"], second["image"])
    synthesize.set_random_state(seed=5)
    again = synthesize({"source": source_map})
    synthesize.set_random_state(seed=5)
    np.testing.assert_array_equal(again["image"], synthesize({"source": source_map})["image"])
    assert np.allclose(np.diag(np.asarray(again["image"].affine))[:3], np.diag(np.asarray(again["label"].affine))[:3])
    with pytest.raises(KeyError, match="source"):
        synthesize({"image": "ct.nii.gz"})


def test_real_ct_scoring_puts_each_label_on_its_image_grid(totalseg_dir):
    """A model that marks the patient's left half (low x in RAS) must score the Dice of that half against
    the label in RAS: prediction and label meet on one grid (the DICOM series and its label are LAS)."""
    import torch

    from bundle.evaluation import REAL_CASES, dice, evaluate_model

    class LowXHalf(torch.nn.Module):
        def forward(self, x):
            logits = torch.full_like(x, -10.0)
            logits[:, :, : x.shape[2] // 2] = 10.0
            return logits

    from conftest import config_files

    results = evaluate_model(LowXHalf(), None, config_files("student", "evaluate", "demo"), REAL_CASES)
    for subject, (_, label_path) in REAL_CASES.items():
        label = np.asarray(nib.as_closest_canonical(nib.load(label_path)).dataobj) == 1
        half = np.zeros_like(label)
        half[: label.shape[0] // 2] = True
        assert results[subject]["dice"] == pytest.approx(dice(half, label), rel=0.02)
        assert results[subject]["dice"] > 0.05  # the spleen lies in that half
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_every_case_has_the_slices_of_a_scan_the_bundle_accepts(source_map):
    """Thick slices and views at the end of the anatomy once gave 3-slice volumes, which the input checks
    (rightly) refuse as no CT series: every case has at least 8 slices (or max_slices, if fewer)."""
    from bundle.checks import as_volume

    source, stats = load_source(source_map), load_hu_stats()
    for seed in range(12):
        options = {**FAST, "slice_thickness_mm": (8.0, 8.0), "max_slices": 64, "tip_only_share": 1.0}
        image, label, _, drawn = synthesize_case((7, seed), source, stats, options)
        assert image.shape[2] >= 8 and label.shape == image.shape, (seed, image.shape, drawn["view"])
        as_volume(image, f"case {seed}")
    image, *_ = synthesize_case((7, 0), source, stats, {**FAST, "max_slices": 5})
    assert image.shape[2] == 5


def test_a_second_folder_from_first_case_holds_the_same_cases_as_one_long_run(tmp_path, source_map):
    from bundle.cli import main

    common = ["--seed", "3", "--sources", source_map, "--matrix_share", "0", "--inplane_spacing", "2.5", "3.0",
              "--slice_thickness", "3", "5", "--max_slices", "8"]
    assert main(["synthesize", "--out", str(tmp_path / "long"), "--cases", "3", *common]) == 0
    assert main(["synthesize", "--out", str(tmp_path / "more"), "--cases", "1", "--first_case", "2", *common]) == 0
    assert sorted(p.name for p in (tmp_path / "more" / "imagesTr").iterdir()) == ["spleen_2.nii.gz"]
    for folder in ("imagesTr", "labelsTr"):
        np.testing.assert_array_equal(nib.load(tmp_path / "more" / folder / "spleen_2.nii.gz").get_fdata(),
                                      nib.load(tmp_path / "long" / folder / "spleen_2.nii.gz").get_fdata())
    with pytest.raises(SystemExit, match="--first_case -1 is negative"):
        main(["synthesize", "--out", str(tmp_path / "bad"), "--cases", "1", "--first_case", "-1", *common])
