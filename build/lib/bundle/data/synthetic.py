"""Synthetic CT in Hounsfield units generated from real multi-organ label maps (after SynthSeg,
Billot et al. 2023), written in the MSD Task09_Spleen layout.

Phantoms of ellipsoids do not transfer to real scans; real label maps carry real anatomy. Each case:

1. takes one source map (TotalSegmentator's 117 structures, 1 = spleen) in RAS voxel order, adds a
   body outline around the labelled structures (abdominal wall muscle, then subcutaneous fat of
   random thickness) and marks unlabelled tissue inside it (visceral fat mixed with soft tissue);
2. warps it with a random affine (rotation, anisotropic scale) and a smooth elastic field, and
   samples it with nearest neighbour onto a new grid: random in-plane spacing and slice thickness,
   random field of view (the reconstruction circle or a tight crop) and craniocaudal range around
   the spleen;
3. fills each structure with a HU value drawn around the statistics measured on real CT
   (``hu_stats.json``, written by ``scripts/measure_hu_stats.py``), with a shared contrast-phase
   shift of the enhancing organs, organ texture, gas in the bowel, an optional patient table, blur
   (the scanner's point-spread function and slice profile) and correlated noise.

The spleen label is exactly ``warped map == 1`` on the image's grid: the image is drawn from the
same warped map. The same ``(seed, case)`` gives byte-identical arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

from ..files import atomic_write_text

SYNTHETIC_DATASET_NAME = "SpleenSynthetic"
HU_STATS_FILE = Path(__file__).with_name("hu_stats.json")
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# Leave-subject-out default: the three dataset subjects with a spleen. The maps of the real CTs that
# transfer is measured on (totalseg_ct/example_seg*.nii.gz) are not among them.
DEFAULT_SOURCES = tuple(SHARED_DATA / "totalseg_dataset" / f"{s}_labels.nii.gz" for s in ("s0001", "s0004", "s0006"))

# TotalSegmentator v2 "total" task, value = position + 1 (the maps it writes, e.g. totalseg_ct/example_seg).
TOTALSEGMENTATOR_CLASSES = (
    ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas", "adrenal_gland_right",
     "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
     "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea", "thyroid_gland", "small_bowel",
     "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left", "kidney_cyst_right", "sacrum"]
    + [f"vertebrae_{v}" for v in ["S1", "L5", "L4", "L3", "L2", "L1"] + [f"T{i}" for i in range(12, 0, -1)]
       + [f"C{i}" for i in range(7, 0, -1)]]
    + ["heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
       "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
       "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava",
       "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
       "iliac_vena_left", "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left", "scapula_right",
       "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord",
       "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
       "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
       "iliopsoas_right", "brain", "skull"]
    + [f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)]
    + ["sternum", "costal_cartilages"]
)

# Tissue values added to the source map (TotalSegmentator uses 1..117).
WALL_MUSCLE, SUBCUTANEOUS_FAT, VISCERAL = 250, 251, 252
ENHANCING_GAIN = {"vessel": 1.6, "kidney": 1.3, "spleen": 1.0, "pancreas": 0.7, "liver": 0.6, "heart": 1.2}
# Last resort where neither the structure nor its tissue group was measured: textbook CT values (median, spread).
PRIOR_HU = {"bone": (350.0, 150.0), "lung": (-850.0, 60.0), "airway": (-950.0, 40.0), "muscle": (45.0, 15.0),
            "vessel": (150.0, 40.0), "bowel": (25.0, 25.0), "fluid": (10.0, 10.0), "fat": (-100.0, 20.0),
            "organ": (60.0, 20.0)}


def label_names(naming: str) -> dict[int, str]:
    """Value -> structure name. ``totalsegmentator``: its v2 class order (``example_seg*.nii.gz``);
    ``dataset``: spleen = 1, the others alphabetically (``totalseg_dataset/*_labels.nii.gz``)."""
    if naming == "totalsegmentator":
        return dict(enumerate(TOTALSEGMENTATOR_CLASSES, start=1))
    if naming == "dataset":
        return dict(enumerate(["spleen"] + sorted(set(TOTALSEGMENTATOR_CLASSES) - {"spleen"}), start=1))
    raise ValueError(f"unknown label naming {naming!r}: use 'totalsegmentator' or 'dataset'.")


def tissue_group(name: str) -> str:
    """Coarse tissue class of a structure: where it was not measured, its group's statistics stand in."""
    if name.startswith(("vertebrae", "rib_", "hip_", "femur", "humerus", "scapula", "clavicula")) or name in (
            "sacrum", "sternum", "skull", "costal_cartilages"):
        return "bone"
    if name.startswith("lung"):
        return "lung"
    if name in ("trachea",):
        return "airway"
    if name.startswith(("gluteus", "iliopsoas", "autochthon")):
        return "muscle"
    if name in ("heart", "atrial_appendage_left") or any(k in name for k in ("aorta", "arter", "vein", "vena",
                                                                             "brachiocephalic_trunk")):
        return "vessel"
    if name in ("stomach", "small_bowel", "colon", "duodenum", "esophagus"):
        return "bowel"
    if name in ("gallbladder", "urinary_bladder") or name.startswith("kidney_cyst"):
        return "fluid"
    return "organ"


def _enhancing_gain(name: str) -> float:
    """How strongly a structure follows the case's contrast-phase shift (0: not enhancing)."""
    if name.startswith("kidney_cyst"):
        return 0.0
    for key, gain in ENHANCING_GAIN.items():
        if name.startswith(key) or (key == "vessel" and tissue_group(name) == "vessel"):
            return gain
    return 0.0


def load_hu_stats(path: str | os.PathLike = HU_STATS_FILE) -> dict[str, tuple[float, float]]:
    """``{structure: (median HU, spread HU)}`` for every TotalSegmentator structure and the added
    tissues: measured where possible, else the median of the measured members of its tissue group,
    else ``PRIOR_HU``."""
    path = Path(path)
    try:
        pooled = json.loads(path.read_text())["pooled"]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"HU statistics '{path}' are unreadable ({error}); regenerate them with "
                         "`python scripts/measure_hu_stats.py --out {path}`.") from error
    groups: dict[str, list[tuple[float, float]]] = {}
    for name, entry in pooled.items():
        groups.setdefault(tissue_group(name), []).append((entry["median"], entry["spread"]))
    group_stats = {g: tuple(np.median(np.array(v), axis=0).tolist()) for g, v in groups.items()}
    stats = {}
    for name in TOTALSEGMENTATOR_CLASSES:
        if name in pooled:
            stats[name] = (pooled[name]["median"], pooled[name]["spread"])
        else:
            group = tissue_group(name)
            stats[name] = group_stats.get(group, PRIOR_HU[group])
    for name, fallback in (("unlabelled_fat", "fat"), ("unlabelled_soft_tissue", "muscle")):
        entry = pooled.get(name)
        stats[name] = (entry["median"], entry["spread"]) if entry else PRIOR_HU[fallback]
    stats["soft_fraction"] = (pooled.get("unlabelled_soft_tissue", {}).get("fraction", 0.3), 0.0)
    return stats


@dataclass
class SourceAnatomy:
    """A label map in RAS voxel order with the added tissues, and the names of its values."""

    labels: np.ndarray  # uint8, values of ``names`` plus VISCERAL (unlabelled inside the body core)
    distance_mm: np.ndarray  # per axial slice, distance outside the labelled core (0 inside), coarser grid
    distance_spacing: np.ndarray
    spacing: np.ndarray
    names: dict[int, str]
    spleen_z_mm: tuple[float, float]


@lru_cache(maxsize=8)
def load_source(path: str, naming: str = "dataset", working_spacing_mm: float = 1.5) -> SourceAnatomy:
    """Read a label map, bring it to RAS and to at least ``working_spacing_mm`` (nearest), and
    outline the body: per axial slice the labelled structures are closed and filled into a core."""
    image = nib.as_closest_canonical(nib.load(path))
    labels = np.asarray(image.dataobj).astype(np.uint8)
    spacing = np.asarray(image.header.get_zooms()[:3], dtype=float)
    zoom = np.minimum(spacing / working_spacing_mm, 1.0)
    if np.any(zoom < 1.0):
        labels = ndimage.zoom(labels, zoom, order=0)
        spacing = spacing / zoom
    if not np.any(labels == 1):
        raise ValueError(f"label map '{path}' has no spleen (value 1); a source needs one to make training cases.")
    # The body outline is found on a coarser in-plane grid (about 3 mm): it needs no finer detail.
    step = max(1, int(round(3.0 / spacing[0])))
    coarse_spacing = spacing * np.array([step, step, 1])
    radius = max(1, int(round(12.0 / coarse_spacing[0])))
    disk = (np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius)[:, :, None]  # in-plane only
    present = np.pad(labels[::step, ::step] > 0, [(radius + 1, radius + 1), (radius + 1, radius + 1), (0, 0)])
    closed = ndimage.binary_closing(present, disk) | present
    # Fill holes slice by slice: foreground caps above and below stop background leaking through z.
    in_plane = ndimage.generate_binary_structure(2, 1)[:, :, None]
    capped = np.pad(closed, [(0, 0), (0, 0), (1, 1)], constant_values=True)
    core = ndimage.binary_fill_holes(capped, in_plane)[radius + 1:-radius - 1, radius + 1:-radius - 1, 1:-1]
    # Distance to the core within each axial slice (a huge z step keeps slices apart); empty slices: far.
    distance = ndimage.distance_transform_edt(~core, sampling=(*coarse_spacing[:2], 1e6)).astype(np.float32)
    full_core = core.repeat(step, axis=0).repeat(step, axis=1)[:labels.shape[0], :labels.shape[1]]
    labels[full_core & (labels == 0)] = VISCERAL
    spleen_z = np.flatnonzero((labels == 1).any(axis=(0, 1))) * spacing[2]
    return SourceAnatomy(labels, np.minimum(distance, 1e4), coarse_spacing, spacing, label_names(naming),
                         (float(spleen_z[0]), float(spleen_z[-1])))


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray, scale_mm: float) -> torch.Tensor:
    """Random field with unit spread and features of about ``scale_mm``: coarse noise, upsampled."""
    coarse = [max(2, int(round(2 * n * s / scale_mm)) + 1) for n, s in zip(shape, spacing, strict=True)]
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.0, mode="wrap")
    field = torch.from_numpy(noise)[None, None]  # smoothed before upsampling: no grid pattern
    field = F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]
    return (field - field.mean()) / (field.std() + 1e-6)


@dataclass
class Acquisition:
    """Where and how a case is sampled: grid, field of view, spatial transform."""

    shape: tuple[int, int, int]
    spacing: np.ndarray  # mm, output grid
    centre_mm: np.ndarray  # source position of the output grid's centre
    matrix: np.ndarray  # output offset (mm) -> source offset (mm)
    elastic_mm: float
    elastic_scale_mm: float


def _draw_acquisition(rng: np.random.Generator, source: SourceAnatomy, inplane_spacing_mm: Sequence[float],
                      slice_thickness_mm: Sequence[float], max_slices: int) -> Acquisition:
    spacing_xy = rng.uniform(*inplane_spacing_mm)
    thickness = rng.uniform(*slice_thickness_mm)
    z_low, z_high = source.spleen_z_mm
    centre_z = rng.uniform(z_low + 0.2 * (z_high - z_low), z_high - 0.2 * (z_high - z_low))
    top = (source.labels.shape[2] - 1) * source.spacing[2]  # the range stays inside the source's slices
    extent_z = min(rng.uniform(40.0, 250.0), max_slices * thickness, 2 * centre_z, 2 * (top - centre_z))
    z_index = int(np.clip(round(centre_z / source.spacing[2]), 0, source.labels.shape[2] - 1))
    body = np.argwhere(source.distance_mm[:, :, z_index] < 25.0) * source.distance_spacing[:2]
    low, high = body.min(axis=0), body.max(axis=0)
    if rng.uniform() < 0.6:  # the scanner's reconstruction circle around the body
        fov = rng.uniform(max(340.0, (high - low).max() + 30.0), 500.0) * np.ones(2)
    else:  # a tight crop that may cut the body's edges
        fov = (high - low) * rng.uniform(0.85, 1.1, size=2)
    centre = np.array([*((low + high) / 2 + rng.normal(0, 10.0, size=2)), centre_z])
    shape = (*(np.round(fov / spacing_xy).astype(int)), max(2, int(round(extent_z / thickness))))
    angles = np.radians([rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(-15, 15)])
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        turn = np.eye(3)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = c, -s, s, c
        rotation = rotation @ turn
    scale = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3)
    return Acquisition(tuple(int(n) for n in shape), np.array([spacing_xy, spacing_xy, thickness]), centre,
                       rotation @ np.diag(1.0 / scale), rng.uniform(0.0, 8.0), rng.uniform(40.0, 90.0))


def _warp(rng: np.random.Generator, source: SourceAnatomy, acq: Acquisition, coarse_step: int = 8) -> tuple:
    """Nearest-neighbour samples of the source labels and body distance on the output grid."""
    coarse = [max(2, -(-n // coarse_step) + 1) if i < 2 else n for i, n in enumerate(acq.shape)]
    axes = [np.linspace(-(n - 1) / 2, (n - 1) / 2, c) * s
            for n, c, s in zip(acq.shape, coarse, acq.spacing, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # output offsets in mm
    points = grid @ acq.matrix.T + acq.centre_mm
    elastic = torch.stack([_smooth_field(rng, coarse, acq.spacing * np.array(acq.shape) / coarse, acq.elastic_scale_mm)
                           for _ in range(3)], dim=-1).numpy()
    points = points + acq.elastic_mm * elastic
    sampled = []
    for volume, spacing, mode in ((source.labels, source.spacing, "nearest"),
                                  (source.distance_mm, source.distance_spacing, "bilinear")):
        extent = (np.array(volume.shape) - 1) * spacing
        normalised = torch.from_numpy((2 * points / extent - 1).astype(np.float32))  # [-1, 1] over the volume
        normalised = F.interpolate(normalised.permute(3, 0, 1, 2)[None], size=acq.shape, mode="trilinear",
                                   align_corners=True)[0].permute(1, 2, 3, 0)
        values = torch.from_numpy(volume.astype(np.float32))[None, None]
        grid = normalised.flip(-1)[None]  # grid_sample wants (last axis, ..., first axis)
        inside = (normalised[..., :2].abs() <= 1).all(dim=-1)  # beyond the source in-plane: air; along z
        # (a tilt at the first or last slice) the border slice goes on, as the body does
        sampled.append((F.grid_sample(values, grid, mode=mode, padding_mode="border", align_corners=True)[0, 0],
                        inside))
    (labels, inside), (distance, _) = sampled
    labels = torch.where(inside, labels, 0).to(torch.uint8).numpy()
    distance = torch.where(inside, distance, 1e4).numpy()
    return labels, distance


def make_synthetic_case(seed: int | Sequence[int], source: SourceAnatomy, stats: dict[str, tuple[float, float]],
                        inplane_spacing_mm: Sequence[float] = (0.6, 3.0),
                        slice_thickness_mm: Sequence[float] = (1.0, 5.0),
                        max_slices: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case from one source: ``(image int16 HU, label uint8 0/1, affine)`` in RAS."""
    rng = np.random.default_rng(seed)
    for _ in range(10):  # a strong warp can push the spleen out of the chosen range: draw again
        acq = _draw_acquisition(rng, source, inplane_spacing_mm, slice_thickness_mm, max_slices)
        labels, distance = _warp(rng, source, acq)
        if np.any(labels == 1):
            break
    else:
        raise RuntimeError("no spleen in view after 10 draws; the source's spleen is too small for this field of view")

    # Body: wall muscle right outside the labelled core, then subcutaneous fat; air beyond.
    wall_mm, fat_mm = rng.uniform(4.0, 14.0), rng.uniform(4.0, 35.0)
    unlabelled = labels == 0
    labels[unlabelled & (distance > 0) & (distance <= wall_mm)] = WALL_MUSCLE
    labels[unlabelled & (distance > wall_mm) & (distance <= wall_mm + fat_mm)] = SUBCUTANEOUS_FAT

    # Per-structure HU: measured median + own jitter + a shared contrast-phase shift for enhancing organs.
    phase_shift = rng.uniform(-40.0, 80.0)  # from unenhanced to late arterial
    mean, texture = np.full(256, -1000.0, dtype=np.float32), np.zeros(256, dtype=np.float32)
    extra = {WALL_MUSCLE: "autochthon_left", SUBCUTANEOUS_FAT: "unlabelled_fat", VISCERAL: "unlabelled_fat"}
    for value, name in [*source.names.items(), *extra.items()]:
        median, spread = stats[name]
        gain = _enhancing_gain(name)
        mean[value] = median + gain * phase_shift + rng.normal(0.0, min(0.5 * spread + 4.0, 40.0))
        texture[value] = rng.uniform(0.15, 0.5) * min(spread, 120.0)

    spacing = acq.spacing
    label_tensor = torch.from_numpy(labels.astype(np.int64))
    image = torch.from_numpy(mean)[label_tensor] + torch.from_numpy(texture)[label_tensor] * _smooth_field(
        rng, acq.shape, spacing, rng.uniform(3.0, 8.0))
    soft_threshold = NormalDist().inv_cdf(1 - stats["soft_fraction"][0])  # that fraction of visceral tissue is soft
    visceral_soft = _smooth_field(rng, acq.shape, spacing, rng.uniform(6.0, 15.0)) > soft_threshold
    soft_median, soft_spread = stats["unlabelled_soft_tissue"]
    image[(label_tensor == VISCERAL) & visceral_soft] = soft_median + rng.normal(0, soft_spread)
    bowel = torch.from_numpy(np.isin(labels, [v for v, n in source.names.items() if tissue_group(n) == "bowel"]))
    gas = _smooth_field(rng, acq.shape, spacing, rng.uniform(8.0, 20.0)) > rng.uniform(0.3, 1.5)
    image[bowel & gas] = rng.uniform(-1000.0, -850.0)
    if rng.uniform() < 0.5:  # patient table under the back
        rows = np.flatnonzero((labels > 0).any(axis=(0, 2)))
        top = rows[0] - int(rng.uniform(0.0, 15.0) / spacing[1])
        thick = max(1, int(rng.uniform(5.0, 20.0) / spacing[1]))
        if top - thick > 0:
            image[:, top - thick:top, :][label_tensor[:, top - thick:top, :] == 0] = rng.uniform(-500.0, 150.0)

    # Scanner: point-spread function in-plane, slice profile along z, then correlated noise.
    psf_mm = rng.uniform(0.5, 1.2)
    blurred = ndimage.gaussian_filter(image.numpy(), sigma=[psf_mm / spacing[0], psf_mm / spacing[1], 0.4])
    noise = ndimage.gaussian_filter(rng.standard_normal(acq.shape).astype(np.float32), sigma=[0.7, 0.7, 0.0])
    noise *= rng.uniform(5.0, 25.0) / (noise.std() + 1e-6)
    hu = np.clip(np.round(blurred + noise), -1024, 3071).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(acq.shape) - 1) / 2 * spacing
    return hu, (labels == 1).astype(np.uint8), affine


def make_synthetic_dataset(out_dir: str | os.PathLike, cases: int = 16, seed: int = 0,
                           sources: Sequence[str | os.PathLike] = DEFAULT_SOURCES, naming: str = "dataset",
                           hu_stats: str | os.PathLike = HU_STATS_FILE, **case_options) -> Path:
    """Write ``cases`` synthetic volumes (``imagesTr/``, ``labelsTr/``, ``dataset.json`` last) and
    return the path of ``dataset.json``. Case ``i`` uses source ``i % len(sources)`` and depends only
    on ``(seed, i)`` and the sources. Refuses a folder that holds another dataset."""
    from .datalist import DataError

    out = Path(out_dir)
    description_path = out / "dataset.json"
    if description_path.is_file():
        try:
            existing_name = json.loads(description_path.read_text()).get("name")
        except (json.JSONDecodeError, AttributeError):
            existing_name = None
        if existing_name != SYNTHETIC_DATASET_NAME:
            raise DataError(f"'{description_path}' describes another dataset ({existing_name!r}); write synthetic "
                            "CT into an empty folder instead (`--out`).")
    sources = [str(s) for s in sources]
    for source in sources:
        if not Path(source).is_file():
            raise DataError(f"source label map '{source}' does not exist; give TotalSegmentator-style maps "
                            "(1 = spleen), e.g. ../shared/data/totalseg_dataset/s0001_labels.nii.gz.")
    stats = load_hu_stats(hu_stats)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for case in range(cases):
        source = load_source(sources[case % len(sources)], naming)
        image, label, affine = make_synthetic_case((seed, case), source, stats, **case_options)
        name = f"spleen_{case}.nii.gz"
        for folder, array in (("imagesTr", image), ("labelsTr", label)):
            nifti = nib.Nifti1Image(array, affine)
            nifti.header.set_xyzt_units("mm")
            nifti.header.set_qform(affine, code=1)
            nifti.header.set_sform(affine, code=1)
            nib.save(nifti, out / folder / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}",
                         "source": Path(sources[case % len(sources)]).name})
    description = {
        "name": SYNTHETIC_DATASET_NAME,
        "description": f"synthetic CT (Hounsfield units) from real label maps, seed {seed}",
        "reference": "spleen-kd bundle/data/synthetic.py; anatomy: TotalSegmentator v2 dataset (CC BY 4.0)",
        "licence": "CC BY 4.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": cases,
        "numTest": 0,
        "sources": [Path(s).name for s in sources],
        "training": training,
        "test": [],
    }
    atomic_write_text(description_path, json.dumps(description, indent=2))
    return description_path


class RandSyntheticCTd(Randomizable, MapTransform):
    """On-the-fly variant: every call draws a new synthetic case from the label map at ``data[source_key]``,
    so every epoch sees new images. Yields channel-first ``image`` (HU) and ``label`` (0/1) MetaTensors with
    their affine, in place of ``LoadImaged`` + ``EnsureChannelFirstd`` in a training pipeline (no caching
    before it: put it in a ``Dataset``, not a ``CacheDataset``)."""

    def __init__(self, source_key: str = "source", image_key: str = "image", label_key: str = "label",
                 naming: str = "dataset", hu_stats: str | os.PathLike = HU_STATS_FILE, **case_options) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        self.source_key, self.image_key, self.label_key, self.naming = source_key, image_key, label_key, naming
        self.stats = load_hu_stats(hu_stats)
        self.case_options = case_options
        self._case_seed = 0

    def randomize(self, data=None) -> None:
        self._case_seed = int(self.R.randint(0, 2 ** 31 - 1))

    def __call__(self, data: dict) -> dict:
        if self.source_key not in data:
            raise KeyError(f"RandSyntheticCTd needs the label map's path under '{self.source_key}' in every item; "
                           f"got keys {sorted(data)}.")
        self.randomize()
        source = load_source(str(data[self.source_key]), self.naming)
        image, label, affine = make_synthetic_case(self._case_seed, source, self.stats, **self.case_options)
        out = dict(data)
        affine = torch.as_tensor(affine, dtype=torch.float64)
        out[self.image_key] = MetaTensor(torch.from_numpy(image.astype(np.float32))[None], affine=affine)
        out[self.label_key] = MetaTensor(torch.from_numpy(label.astype(np.float32))[None], affine=affine.clone())
        return out
