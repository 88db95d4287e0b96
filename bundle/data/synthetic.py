"""Synthetic CT in Hounsfield units generated from real multi-organ label maps (after SynthSeg,
Billot et al. 2023), written in the MSD Task09_Spleen layout.

Phantoms of ellipsoids do not transfer to real scans; real label maps carry real anatomy. Each case:

1. **anatomy**: one source map (TotalSegmentator's 117 structures, 1 = spleen) in RAS voxel order with
   a body outline (abdominal wall muscle, subcutaneous fat) and unlabelled visceral tissue; its own
   spleen is replaced by one of 40 real spleen masks of the Decathlon (or kept), rescaled to between
   a small spleen and splenomegaly (``spleen_ml``), with hypodense lesions or cysts inside
   the spleen label and accessory spleens beside it in some cases;
2. **acquisition**: a random affine and a smooth elastic warp, sampled with nearest neighbour onto a
   new grid: a clinical 512² matrix (0.5–1.0 mm) or a coarser resampled grid, slice thickness up to
   8 mm with the slice profile averaged over sub-slices (partial volume), a field of view that may cut
   the spleen at the image edge or show only its tip;
3. **intensities**: a contrast phase (unenhanced, arterial with a striped spleen, portal-venous,
   delayed; ``contrast_phases.json``) sets each enhancing structure group's mean independently,
   non-enhancing tissues come from HU measured on real CT without a spleen in view
   (``hu_stats.json``), or every structure gets a random mean (SynthSeg-style contrast); organ texture,
   bowel gas and oral contrast, a patient table, streaks from bone or metal, the scanner's blur and
   noise that grows as slices thin.

The spleen label is exactly ``warped map ∈ {spleen, lesion}`` on the image's grid: the image is drawn
from the same warped map. The same ``(seed, case)`` gives byte-identical arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
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

from ..checks import MIN_SLICES
from ..files import atomic_write_text
from .assets import DEFAULT_SOURCES, DEFAULT_SPLEEN_MASKS, HU_STATS_FILE

SYNTHETIC_DATASET_NAME = "SpleenSynthetic"
CONTRAST_PHASES_FILE = Path(__file__).with_name("contrast_phases.json")

# TotalSegmentator v2 "total" task, value = position + 1 (the maps it writes, e.g. fixtures/example_seg).
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

SPLEEN = 1
# Tissue values added to the source map (TotalSegmentator uses 1..117).
WALL_MUSCLE, SUBCUTANEOUS_FAT, VISCERAL, SPLEEN_LESION = 250, 251, 252, 253
SPLEEN_VALUES = (SPLEEN, SPLEEN_LESION)  # what the label calls spleen
# Last resort where neither the structure nor its tissue group was measured: textbook CT values (median, spread).
PRIOR_HU = {"bone": (350.0, 150.0), "lung": (-850.0, 60.0), "airway": (-950.0, 40.0), "muscle": (45.0, 15.0),
            "vessel": (150.0, 40.0), "bowel": (25.0, 25.0), "fluid": (10.0, 10.0), "fat": (-100.0, 20.0),
            "organ": (45.0, 15.0)}
FEWEST_SLICES = 8  # the fewest slices of a generated volume (fewer only when max_slices asks for fewer)
CLINICAL_THICKNESS_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 5.0, 5.0, 7.0, 7.5, 8.0)


def label_names(naming: str) -> dict[int, str]:
    """Value -> structure name. ``totalsegmentator``: its v2 class order (``example_seg*.nii.gz``);
    ``dataset``: spleen = 1, the others alphabetically (``sources/totalseg/*_labels.nii.gz``)."""
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


def phase_group(name: str) -> str | None:
    """The group of ``contrast_phases.json`` whose mean a structure takes, or None (not enhancing)."""
    if name in ("spleen", "liver", "pancreas"):
        return name
    if name in ("kidney_left", "kidney_right"):
        return "kidney"
    if name.startswith("adrenal"):
        return "adrenal"
    if name in ("heart", "atrial_appendage_left"):
        return "heart"
    if name == "portal_vein_and_splenic_vein":
        return "portal"
    if tissue_group(name) == "vessel":
        return "artery" if ("aorta" in name or "arter" in name or name == "brachiocephalic_trunk") else "vein"
    return None


def load_hu_stats(path: str | os.PathLike = HU_STATS_FILE) -> dict[str, tuple[float, float]]:
    """``{structure: (median HU, spread HU)}`` for every TotalSegmentator structure and the added
    tissues: measured where possible, else the median of the measured members of its tissue group,
    else ``PRIOR_HU``. Enhancing organs take their means from the contrast phase instead."""
    path = Path(path)
    try:
        pooled = json.loads(path.read_text())["pooled"]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"HU statistics '{path}' are unreadable ({error}); regenerate them with "
                         f"`spleen-kd measure-hu --out {path}`.") from error
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


@lru_cache(maxsize=2)
def load_contrast_phases(path: str | os.PathLike = CONTRAST_PHASES_FILE) -> dict:
    """The per-phase HU ranges (see ``contrast_phases.json``), checked for the groups the generator needs."""
    try:
        content = json.loads(Path(path).read_text())
        phases = content["phases"]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"contrast phases '{path}' are unreadable ({error}).") from error
    needed = {"weight", "spleen", "liver", "kidney", "pancreas", "adrenal", "artery", "portal", "vein", "heart",
              "muscle_gain"}
    for name, phase in phases.items():
        missing = needed - set(phase)
        if missing:
            raise ValueError(f"contrast phase '{name}' in '{path}' lacks {sorted(missing)}.")
    return content


@dataclass
class SourceAnatomy:
    """A label map in RAS voxel order with the added tissues, and the names of its values."""

    labels: np.ndarray  # uint8, values of ``names`` plus VISCERAL (unlabelled inside the body core)
    spleen_free: np.ndarray  # ``labels`` with the spleen filled by its neighbours (where another spleen goes)
    distance_mm: np.ndarray  # per axial slice, distance outside the labelled core (0 inside), coarser grid
    distance_spacing: np.ndarray
    spacing: np.ndarray
    names: dict[int, str]
    spleen_z_mm: tuple[float, float]


def _box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, widened by ``margin`` voxels and clipped to the array."""
    where = np.argwhere(mask)
    low, high = np.maximum(where.min(axis=0) - margin, 0), np.minimum(where.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _without_spleen(labels: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """The map with every spleen voxel given the value of its nearest neighbour that is neither spleen nor
    bone nor air: neighbouring organs and visceral tissue close over the space a new spleen is placed in."""
    box = _box(labels == SPLEEN, margin=12)
    region = labels[box]
    bone = [v for v, n in names.items() if tissue_group(n) == "bone"]
    donor = (region != SPLEEN) & (region != 0) & ~np.isin(region, bone)
    out = labels.copy()
    if donor.any():
        _, nearest = ndimage.distance_transform_edt(~donor, return_indices=True)
        filled = region[tuple(nearest)]
        out[box] = np.where(region == SPLEEN, filled, region)
    else:
        out[labels == SPLEEN] = VISCERAL
    return out


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
    if not np.any(labels == SPLEEN):
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
    names = label_names(naming)
    spleen_z = np.flatnonzero((labels == SPLEEN).any(axis=(0, 1))) * spacing[2]
    return SourceAnatomy(labels, _without_spleen(labels, names), np.minimum(distance, 1e4), coarse_spacing, spacing,
                         names, (float(spleen_z[0]), float(spleen_z[-1])))


@lru_cache(maxsize=64)
def load_spleen_mask(path: str, spacing_mm: float = 1.5) -> np.ndarray:
    """A real spleen mask (1 = spleen), in RAS, cropped to the spleen and resampled to ``spacing_mm``
    (linear interpolation of the mask, thresholded at one half: thick slices give no staircase)."""
    image = nib.as_closest_canonical(nib.load(path))
    mask = np.asarray(image.dataobj) > 0
    if mask.ndim != 3 or not mask.any():
        raise ValueError(f"spleen mask '{path}' is not a 3D mask with a spleen (value 1).")
    spacing = np.asarray(image.header.get_zooms()[:3], dtype=float)
    cropped = mask[_box(mask, margin=1)].astype(np.float32)
    return ndimage.zoom(cropped, spacing / spacing_mm, order=1) > 0.5


@dataclass
class CaseOptions:
    """What a synthetic case may look like; each ``*_share`` is the fraction of cases with that feature."""

    matrix_share: float = 0.7  # clinical reconstruction: a ``matrix``² grid over a 220-500 mm field of view
    matrix: int = 512
    inplane_spacing_mm: Sequence[float] = (1.2, 3.0)  # the other cases: resampled, coarser grids
    slice_thickness_mm: Sequence[float] = (1.0, 8.0)
    max_slices: int = 64
    spleen_masks: Sequence[str] = tuple(str(p) for p in DEFAULT_SPLEEN_MASKS)
    real_mask_share: float = 0.75  # the spleen is a Decathlon mask, else the source's own
    spleen_ml: Sequence[float] = (50.0, 800.0)  # log-uniform spleen volume: small spleen to splenomegaly
    lesion_share: float = 0.2
    accessory_share: float = 0.1
    random_contrast_share: float = 0.1
    cut_fov_share: float = 0.15  # the spleen cut by the in-plane field of view, at the image edge
    tip_only_share: float = 0.1  # only the spleen's lower tip (or its dome) in the craniocaudal range
    oral_contrast_share: float = 0.25
    streak_share: float = 0.25
    metal_share: float = 0.08

    @classmethod
    def of(cls, options: CaseOptions | dict | None) -> CaseOptions:
        if isinstance(options, cls):
            return options
        options = dict(options or {})
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown synthetic case options {sorted(unknown)}; known: "
                             f"{sorted(f.name for f in fields(cls))}.")
        return cls(**options)


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray, scale_mm: float) -> torch.Tensor:
    """Random field with unit spread and features of about ``scale_mm``: coarse noise, upsampled."""
    coarse = [max(2, int(round(2 * n * s / scale_mm)) + 1) for n, s in zip(shape, spacing, strict=True)]
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.0, mode="wrap")
    field = torch.from_numpy(noise)[None, None]  # smoothed before upsampling: no grid pattern
    field = F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]
    return (field - field.mean()) / (field.std() + 1e-6)


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _spheres(shape: Sequence[int], spacing: np.ndarray, centres_mm: np.ndarray, radii_mm: np.ndarray) -> np.ndarray:
    """Union of ellipsoids (``radii_mm`` per axis) on a grid, each evaluated inside its own box only."""
    out = np.zeros(shape, dtype=bool)
    for centre, radius in zip(centres_mm, radii_mm):
        low = np.maximum(np.floor((centre - radius) / spacing).astype(int), 0)
        high = np.minimum(np.ceil((centre + radius) / spacing).astype(int) + 1, shape)
        if np.any(high <= low):
            continue
        axes = [(np.arange(a, b) * s - c) / r for a, b, s, c, r in zip(low, high, spacing, centre, radius)]
        inside = sum(np.meshgrid(*[a ** 2 for a in axes], indexing="ij")) <= 1.0
        out[tuple(slice(a, b) for a, b in zip(low, high))] |= inside
    return out


def _place_spleen(rng: np.random.Generator, source: SourceAnatomy, options: CaseOptions) -> tuple[np.ndarray, dict]:
    """The case's anatomy: the source map with a (rescaled) real spleen in place of its own, lesions inside
    it and accessory spleens beside it. Returns the map and what was drawn."""
    own = source.labels == SPLEEN
    own_box = _box(own)
    use_mask = bool(options.spleen_masks) and rng.uniform() < options.real_mask_share
    if use_mask:
        mask_path = options.spleen_masks[int(rng.integers(len(options.spleen_masks)))]
        shape = load_spleen_mask(str(mask_path), float(source.spacing[0]))
    else:
        mask_path, shape = None, own[own_box]
    volume_scale = _loguniform(rng, *options.spleen_ml) / (shape.sum() * np.prod(source.spacing) / 1000)
    stretch = rng.uniform(0.92, 1.08, size=3)
    zoom = volume_scale ** (1 / 3) * stretch / np.prod(stretch) ** (1 / 3)
    shape = ndimage.zoom(shape.astype(np.float32), zoom, order=1) > 0.5
    labels = source.spleen_free.copy()
    # Anchor: the new spleen's dome at the old one's, its in-plane centre at the old one's; it grows downwards.
    old = np.argwhere(own)
    centre_xy = old[:, :2].mean(axis=0) + rng.normal(0.0, 5.0 / source.spacing[0], size=2)
    top = old[:, 2].max() + rng.normal(0.0, 5.0 / source.spacing[2])
    new = np.argwhere(shape)
    offset = np.round([*(centre_xy - new[:, :2].mean(axis=0)), top - new[:, 2].max()]).astype(int)
    points = new + offset
    inside = np.all((points >= 0) & (points < labels.shape), axis=1)
    points = points[inside]
    bone = np.array([v for v, n in source.names.items() if tissue_group(n) == "bone"])
    keep = ~np.isin(labels[tuple(points.T)], bone)  # ribs and spine stay where they are
    labels[tuple(points[keep].T)] = SPLEEN
    spleen = labels == SPLEEN
    if not spleen.any():  # the mask fell outside the map: keep the source's spleen
        labels, spleen = source.labels.copy(), own
    drawn = {"spleen_mask": Path(mask_path).name if mask_path else "own", "spleen_volume_scale": round(volume_scale, 3),
             "spleen_ml": round(float(spleen.sum() * np.prod(source.spacing) / 1000), 1), "lesions": 0,
             "accessory_spleens": 0}

    box = _box(spleen, margin=int(round(30.0 / source.spacing[0])))
    region, spleen_region = labels[box], spleen[box]
    box_spacing = source.spacing
    if rng.uniform() < options.lesion_share:  # hypodense lesions or cysts, inside the spleen label
        voxels = np.argwhere(spleen_region)
        count = int(rng.integers(1, 5))
        centres = voxels[rng.integers(len(voxels), size=count)] * box_spacing
        radii = rng.uniform(3.0, 20.0, size=(count, 1)) * rng.uniform(0.7, 1.3, size=(count, 3))
        lesion = _spheres(region.shape, box_spacing, centres, radii) & spleen_region
        region[lesion] = SPLEEN_LESION
        drawn["lesions"] = count
    if rng.uniform() < options.accessory_share:  # splenules in the fat near the spleen
        distance = ndimage.distance_transform_edt(~spleen_region, sampling=box_spacing)
        for _ in range(int(rng.integers(1, 3))):
            radius = rng.uniform(4.0, 12.0)
            candidates = np.argwhere((region == VISCERAL) & (distance > radius + 1) & (distance < radius + 15))
            if len(candidates) == 0:
                break
            centre = candidates[rng.integers(len(candidates))] * box_spacing
            ball = _spheres(region.shape, box_spacing, centre[None], np.full((1, 3), radius))
            region[ball & (region == VISCERAL)] = SPLEEN
            drawn["accessory_spleens"] += 1
    labels[box] = region
    return labels, drawn


@dataclass
class Acquisition:
    """Where and how a case is sampled: grid, field of view, spatial transform."""

    shape: tuple[int, int, int]
    spacing: np.ndarray  # mm, output grid
    centre_mm: np.ndarray  # source position of the output grid's centre
    matrix: np.ndarray  # output offset (mm) -> source offset (mm)
    elastic_mm: float
    elastic_scale_mm: float
    notes: dict = field(default_factory=dict)


def _slice_thickness(rng: np.random.Generator, low: float, high: float) -> float:
    """Half the cases a clinical reconstruction thickness within [low, high], the others uniform."""
    clinical = [t for t in CLINICAL_THICKNESS_MM if low <= t <= high]
    if clinical and rng.uniform() < 0.5:
        return float(clinical[int(rng.integers(len(clinical)))])
    return float(rng.uniform(low, high))


def _draw_acquisition(rng: np.random.Generator, source: SourceAnatomy, labels: np.ndarray,
                      options: CaseOptions) -> Acquisition:
    spleen = np.argwhere(labels == SPLEEN) * source.spacing
    spleen_low, spleen_high = spleen.min(axis=0), spleen.max(axis=0)
    thickness = _slice_thickness(rng, *options.slice_thickness_mm)
    top = (labels.shape[2] - 1) * source.spacing[2]  # the range stays inside the source's slices
    z_low, z_high = spleen_low[2], spleen_high[2]
    notes = {"thickness_mm": round(thickness, 2), "view": "spleen"}
    tip = rng.uniform() < options.tip_only_share
    extent_z = min(rng.uniform(60.0, 320.0), options.max_slices * thickness)
    if tip:  # only the lower tip (or, one time in three, the dome) reaches into the range
        inside = rng.uniform(5.0, 40.0)
        if rng.uniform() < 2 / 3:
            centre_z, notes["view"] = z_low + inside - extent_z / 2, "tip"
        else:
            centre_z, notes["view"] = z_high - inside + extent_z / 2, "dome"
    else:
        centre_z = rng.uniform(z_low + 0.2 * (z_high - z_low), z_high - 0.2 * (z_high - z_low))
    # a scan, not a slab: at least FEWEST_SLICES slices (the input checks refuse fewer than 4), so the
    # range is moved inside the anatomy rather than cut to a few slices at its end
    fewest = max(MIN_SLICES, min(FEWEST_SLICES, options.max_slices))
    half = min(fewest * thickness, top) / 2
    centre_z = float(np.clip(centre_z, half, top - half))
    extent_z = max(fewest * thickness, min(extent_z, 2 * centre_z, 2 * (top - centre_z)))
    z_index = int(np.clip(round(centre_z / source.spacing[2]), 0, labels.shape[2] - 1))
    body = np.argwhere(source.distance_mm[:, :, z_index] < 25.0) * source.distance_spacing[:2]
    if len(body) == 0:
        body = np.argwhere(source.distance_mm.min(axis=2) < 25.0) * source.distance_spacing[:2]
    low, high = body.min(axis=0), body.max(axis=0)
    centre_xy = (low + high) / 2 + rng.normal(0, 10.0, size=2)
    if rng.uniform() < options.matrix_share:  # clinical: a square matrix over the reconstruction field of view
        if rng.uniform() < 0.2:  # a small field of view, somewhere over the abdomen
            fov = rng.uniform(220.0, 340.0)
            centre_xy = centre_xy + rng.normal(0, 30.0, size=2)
            notes["fov"] = "small"
        else:
            fov = rng.uniform(max(320.0, (high - low).max() + 20.0), 500.0)
        spacing_xy = fov / options.matrix
        extent_xy = np.full(2, fov)
    else:
        spacing_xy = rng.uniform(*options.inplane_spacing_mm)
        if rng.uniform() < 0.6:  # the scanner's reconstruction circle around the body
            extent_xy = rng.uniform(max(340.0, (high - low).max() + 30.0), 500.0) * np.ones(2)
        else:  # a tight crop that may cut the body's edges
            extent_xy = (high - low) * rng.uniform(0.85, 1.1, size=2)
    if rng.uniform() < options.cut_fov_share:
        # the field of view's edge runs through the spleen: part of it is out of view
        spleen_xy = (spleen_low[:2] + spleen_high[:2]) / 2
        away = spleen_xy - centre_xy
        away /= np.linalg.norm(away) + 1e-6
        reach = np.abs(away) @ (spleen_high[:2] - spleen_low[:2]) / 2
        centre_xy = spleen_xy - away * (extent_xy.min() / 2 - rng.uniform(-0.3, 0.6) * reach)
        notes["fov_cut"] = True
    centre = np.array([*centre_xy, centre_z])
    shape = (*(np.maximum(np.round(extent_xy / spacing_xy), 16).astype(int)), max(fewest, int(round(extent_z / thickness))))
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
                       rotation @ np.diag(1.0 / scale), rng.uniform(0.0, 8.0), rng.uniform(40.0, 90.0), notes)


def _warp(rng: np.random.Generator, source: SourceAnatomy, acq: Acquisition, labels: np.ndarray | None = None,
          coarse_step: int = 8, z_offsets: Sequence[float] = (0.0,), inplane_step: int = 1) -> tuple:
    """Nearest-neighbour samples of the labels (default: the source's) and the body distance on the output
    grid. ``z_offsets`` (in slices) sample sub-slices around each slice centre, on a grid ``inplane_step``
    times coarser in-plane: ``labels`` then has the sub-slices along a last axis. The elastic field is
    drawn once per call, so equal arguments and generator state give equal samples."""
    labels = source.labels if labels is None else labels
    coarse = [max(2, -(-n // coarse_step) + 1) if i < 2 else n for i, n in enumerate(acq.shape)]
    axes = [np.linspace(-(n - 1) / 2, (n - 1) / 2, c) * s
            for n, c, s in zip(acq.shape, coarse, acq.spacing, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # output offsets in mm
    elastic = torch.stack([_smooth_field(rng, coarse, acq.spacing * np.array(acq.shape) / coarse, acq.elastic_scale_mm)
                           for _ in range(3)], dim=-1).numpy()
    out_shape = (-(-acq.shape[0] // inplane_step), -(-acq.shape[1] // inplane_step), acq.shape[2])
    samples = []
    for offset in z_offsets:
        points = (grid + np.array([0.0, 0.0, offset * acq.spacing[2]])) @ acq.matrix.T + acq.centre_mm
        points = points + acq.elastic_mm * elastic
        sampled = []
        for volume, spacing, mode in ((labels, source.spacing, "nearest"),
                                      (source.distance_mm, source.distance_spacing, "bilinear")):
            extent = (np.array(volume.shape) - 1) * spacing
            normalised = torch.from_numpy((2 * points / extent - 1).astype(np.float32))  # [-1, 1] over the volume
            normalised = F.interpolate(normalised.permute(3, 0, 1, 2)[None], size=out_shape, mode="trilinear",
                                       align_corners=True)[0].permute(1, 2, 3, 0)
            values = torch.from_numpy(volume.astype(np.float32))[None, None]
            where = normalised.flip(-1)[None]  # grid_sample wants (last axis, ..., first axis)
            inside = (normalised[..., :2].abs() <= 1).all(dim=-1)  # beyond the source in-plane: air; along z
            # (a tilt at the first or last slice) the border slice goes on, as the body does
            sampled.append((F.grid_sample(values, where, mode=mode, padding_mode="border", align_corners=True)[0, 0],
                            inside))
            if len(z_offsets) > 1:
                break  # sub-slices need the labels only
        (warped, inside), *rest = sampled
        samples.append(torch.where(inside, warped, 0).to(torch.uint8).numpy())
        if rest:
            distance = torch.where(rest[0][1], rest[0][0], 1e4).numpy()
    if len(z_offsets) > 1:
        return np.stack(samples, axis=-1), None
    return samples[0], distance


def _sub_slice_offsets(thickness_mm: float, step_mm: float = 1.25) -> np.ndarray:
    """Offsets (in slices) of the sub-slices that a slice of this thickness integrates over: an odd count
    about ``step_mm`` apart, symmetric around the slice centre; one (the centre) for thin slices."""
    count = 2 * int(round(thickness_mm / (2 * step_mm))) + 1
    return (np.arange(count) - count // 2) / count if count > 1 else np.zeros(1)


def _phase_means(rng: np.random.Generator, names: dict[int, str], stats: dict, phases: dict) -> tuple[str, np.ndarray, dict]:
    """The case's contrast phase and the mean HU of every map value (256 entries; unused values are air)."""
    table = phases["phases"]
    weights = np.array([p["weight"] for p in table.values()], dtype=float)
    phase = list(table)[int(rng.choice(len(table), p=weights / weights.sum()))]
    ranges = table[phase]
    group_mean = {g: rng.uniform(*ranges[g]) for g in ("spleen", "liver", "kidney", "pancreas", "adrenal", "artery",
                                                       "portal", "vein", "heart")}
    steatosis = phases.get("steatotic_liver", {})
    if rng.uniform() < steatosis.get("share", 0.0):
        group_mean["liver"] -= rng.uniform(*steatosis["drop"])
    muscle_gain = rng.uniform(*ranges["muscle_gain"])
    mean = np.full(256, -1000.0, dtype=np.float32)
    extra = {WALL_MUSCLE: "autochthon_left", SUBCUTANEOUS_FAT: "unlabelled_fat", VISCERAL: "unlabelled_fat"}
    for value, name in [*names.items(), *extra.items()]:
        group = phase_group(name)
        if group is not None:
            mean[value] = group_mean[group] + rng.normal(0.0, 4.0)
        else:
            median, spread = stats[name]
            mean[value] = median + rng.normal(0.0, min(0.25 * spread + 4.0, 30.0))
            if tissue_group(name) == "muscle" or value == WALL_MUSCLE:
                mean[value] += muscle_gain
    mean[SPLEEN_LESION] = mean[SPLEEN]  # replaced by the lesion's own value later
    return phase, mean, {"liver_hu": round(float(group_mean["liver"]), 1),
                         "spleen_hu": round(float(group_mean["spleen"]), 1)}


def _streaks(rng: np.random.Generator, shape: tuple[int, int], spacing: float, origin: np.ndarray, count: int,
             amplitude: float) -> np.ndarray:
    """Radial streaks through ``origin`` (pixels): thin bright and dark lines that fade with distance."""
    x = (np.arange(shape[0])[:, None] - origin[0]) * spacing
    y = (np.arange(shape[1])[None, :] - origin[1]) * spacing
    radius = np.hypot(x, y)
    fade = np.exp(-radius / rng.uniform(60.0, 200.0))
    out = np.zeros(shape, dtype=np.float32)
    for angle, strength, width in zip(rng.uniform(0, np.pi, count), rng.normal(0, amplitude, count),
                                      rng.uniform(0.6, 2.0, count)):
        across = np.abs(x * np.sin(angle) - y * np.cos(angle))
        out += (strength * np.exp(-0.5 * (across / width) ** 2) * fade).astype(np.float32)
    return out


def make_synthetic_case(seed: int | Sequence[int], source: SourceAnatomy, stats: dict[str, tuple[float, float]],
                        options: CaseOptions | dict | None = None, **option_overrides) -> tuple[np.ndarray, np.ndarray,
                                                                                                 np.ndarray]:
    """One case from one source: ``(image int16 HU, label uint8 0/1, affine)`` in RAS (see the module
    docstring; ``options`` or keyword overrides are :class:`CaseOptions` fields)."""
    image, label, affine, _ = synthesize_case(seed, source, stats, options, **option_overrides)
    return image, label, affine


def synthesize_case(seed, source: SourceAnatomy, stats: dict, options: CaseOptions | dict | None = None,
                    phases: dict | None = None, **option_overrides) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """:func:`make_synthetic_case` and a dict of what was drawn (phase, spleen, acquisition)."""
    options = CaseOptions.of({**(vars(options) if isinstance(options, CaseOptions) else options or {}),
                              **option_overrides})
    phases = phases or load_contrast_phases()
    rng = np.random.default_rng(seed)
    for _ in range(10):  # a strong warp can push the spleen out of the chosen range: draw again
        anatomy, drawn = _place_spleen(rng, source, options)
        acq = _draw_acquisition(rng, source, anatomy, options)
        warp_state = rng.bit_generator.state
        labels, distance = _warp(rng, source, acq, anatomy)
        if np.isin(labels, SPLEEN_VALUES).any():
            break
    else:
        raise RuntimeError("no spleen in view after 10 draws; the source's spleen is too small for this field of view")
    drawn.update(acq.notes)
    spacing = acq.spacing

    # Body: wall muscle right outside the labelled core, then subcutaneous fat; air beyond.
    wall_mm, fat_mm = rng.uniform(4.0, 14.0), rng.uniform(4.0, 35.0)
    unlabelled = labels == 0
    labels[unlabelled & (distance > 0) & (distance <= wall_mm)] = WALL_MUSCLE
    labels[unlabelled & (distance > wall_mm) & (distance <= wall_mm + fat_mm)] = SUBCUTANEOUS_FAT

    # Means per structure from the contrast phase (enhancing organs) and measured HU (the rest).
    phase, mean, hu = _phase_means(rng, source.names, stats, phases)
    random_contrast = rng.uniform() < options.random_contrast_share
    if random_contrast:  # SynthSeg: any contrast between structures, the anatomy alone tells the spleen
        mean[1:] = rng.uniform(-150.0, 300.0, size=255)
        phase = "random"
    drawn.update(phase=phase, **hu)
    texture = np.zeros(256, dtype=np.float32)
    for value, name in [*source.names.items(), (WALL_MUSCLE, "autochthon_left"), (SUBCUTANEOUS_FAT, "unlabelled_fat"),
                        (VISCERAL, "unlabelled_fat")]:
        spread = phases.get("texture_hu", 12.0) if phase_group(name) is not None else stats[name][1]
        texture[value] = rng.uniform(0.15, 0.5) * min(spread, 120.0)
    texture[SPLEEN_LESION] = texture[SPLEEN]

    label_tensor = torch.from_numpy(labels.astype(np.int64))
    image = torch.from_numpy(mean)[label_tensor] + torch.from_numpy(texture)[label_tensor] * _smooth_field(
        rng, acq.shape, spacing, rng.uniform(3.0, 8.0))
    spleen = label_tensor == SPLEEN
    stripes = phases["phases"].get(phase, {}).get("spleen_stripes")
    if stripes:  # arterial phase: arciform bands of the red and white pulp
        bands = torch.cos(2 * np.pi * _smooth_field(rng, acq.shape, spacing, rng.uniform(15.0, 35.0))
                          / rng.uniform(0.6, 1.4))
        image[spleen] += rng.uniform(*stripes) * bands[spleen]
    lesion = label_tensor == SPLEEN_LESION
    if lesion.any():
        cyst = rng.uniform() < 0.5
        image[lesion] = (rng.uniform(0.0, 20.0) if cyst else mean[SPLEEN] - rng.uniform(25.0, 70.0)) + (
            rng.uniform(0.0, 4.0) if cyst else rng.uniform(4.0, 12.0)) * torch.from_numpy(
            rng.standard_normal(int(lesion.sum())).astype(np.float32))
    soft_threshold = NormalDist().inv_cdf(1 - stats["soft_fraction"][0])  # that fraction of visceral tissue is soft
    visceral_soft = _smooth_field(rng, acq.shape, spacing, rng.uniform(6.0, 15.0)) > soft_threshold
    soft_median, soft_spread = stats["unlabelled_soft_tissue"]
    image[(label_tensor == VISCERAL) & visceral_soft] = soft_median + rng.normal(0, soft_spread)
    bowel = torch.from_numpy(np.isin(labels, [v for v, n in source.names.items() if tissue_group(n) == "bowel"]))
    contents = _smooth_field(rng, acq.shape, spacing, rng.uniform(8.0, 20.0))
    gas = contents > rng.uniform(0.3, 1.5)
    image[bowel & gas] = rng.uniform(-1000.0, -850.0)
    if rng.uniform() < options.oral_contrast_share:  # positive oral contrast in part of the bowel
        filled = bowel & ~gas & (contents < rng.uniform(-0.5, 0.5))
        image[filled] = rng.uniform(150.0, 500.0)
        drawn["oral_contrast"] = True
    if rng.uniform() < 0.5:  # patient table under the back
        rows = np.flatnonzero((labels > 0).any(axis=(0, 2)))
        top = rows[0] - int(rng.uniform(0.0, 15.0) / spacing[1])
        thick = max(1, int(rng.uniform(5.0, 20.0) / spacing[1]))
        if top - thick > 0:
            image[:, top - thick:top, :][label_tensor[:, top - thick:top, :] == 0] = rng.uniform(-500.0, 150.0)

    image = image.numpy()
    offsets = _sub_slice_offsets(spacing[2])
    if len(offsets) > 1:
        # Partial volume: a thick slice averages its slab. The structure means averaged over sub-slices
        # (on a coarser in-plane grid) replace the slice centre's where they differ.
        step = max(1, int(np.ceil(max(acq.shape[:2]) / 192)))
        rng.bit_generator.state = warp_state  # the same elastic field as the slice centres
        sub, _ = _warp(rng, source, acq, anatomy, z_offsets=tuple(offsets), inplane_step=step)
        sub = sub.astype(np.int64)
        near = distance[::step, ::step, :, None]
        body_wall = np.where(near <= wall_mm, WALL_MUSCLE, np.where(near <= wall_mm + fat_mm, SUBCUTANEOUS_FAT, 0))
        sub = np.where(sub == 0, body_wall, sub)
        slab = mean[sub].mean(axis=-1) - mean[sub[..., len(offsets) // 2]]
        if step > 1:
            slab = F.interpolate(torch.from_numpy(slab)[None, None], size=acq.shape, mode="trilinear",
                                 align_corners=False)[0, 0].numpy()
        image += slab
        rng = np.random.default_rng([*np.atleast_1d(seed), 1])  # the stream after the warp differs: reseed
    if rng.uniform() < options.streak_share + options.metal_share:
        metal = rng.uniform() < options.metal_share / (options.streak_share + options.metal_share)
        body = np.argwhere(labels > 0)
        bone_values = [v for v, n in source.names.items() if tissue_group(n) == "bone"]
        dense = np.argwhere(np.isin(labels, bone_values)) if not metal else body
        if len(dense) > 0:
            origin = dense[rng.integers(len(dense))]
            reach = int(rng.integers(2, 12))
            z_range = slice(max(0, origin[2] - reach), origin[2] + reach + 1)
            pattern = _streaks(rng, acq.shape[:2], spacing[0], origin[:2], int(rng.integers(6, 20)),
                               rng.uniform(60.0, 250.0) if metal else rng.uniform(10.0, 40.0))
            image[:, :, z_range] += pattern[:, :, None]
            if metal:
                radius = rng.uniform(1.5, 5.0, size=3)
                ball = _spheres(acq.shape, spacing, (origin * spacing)[None], np.maximum(radius, spacing / 1.5)[None])
                image[ball] = rng.uniform(2000.0, 3071.0)
            drawn["streaks"] = "metal" if metal else "bone"

    # Scanner: point-spread function in-plane, then correlated noise that grows as slices thin.
    psf_mm = rng.uniform(0.5, 1.2)
    blurred = ndimage.gaussian_filter(image, sigma=[psf_mm / spacing[0], psf_mm / spacing[1], 0.3])
    noise = ndimage.gaussian_filter(rng.standard_normal(acq.shape).astype(np.float32), sigma=[0.7, 0.7, 0.0])
    noise_hu = min(rng.uniform(6.0, 20.0) * np.sqrt(5.0 / spacing[2]), 50.0)
    noise *= noise_hu / (noise.std() + 1e-6)
    drawn["noise_hu"] = round(float(noise_hu), 1)
    hu_image = np.clip(np.round(blurred + noise), -1024, 3071).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(acq.shape) - 1) / 2 * spacing
    return hu_image, np.isin(labels, SPLEEN_VALUES).astype(np.uint8), affine, drawn


def make_synthetic_dataset(out_dir: str | os.PathLike, cases: int = 16, seed: int = 0,
                           sources: Sequence[str | os.PathLike] = DEFAULT_SOURCES, naming: str = "dataset",
                           hu_stats: str | os.PathLike = HU_STATS_FILE, first_case: int = 0,
                           log=None, **case_options) -> Path:
    """Write cases ``first_case … first_case + cases - 1`` (``imagesTr/``, ``labelsTr/``, ``dataset.json``
    last) and return the path of ``dataset.json``. Case ``i`` uses source ``i % len(sources)`` and depends
    only on ``(seed, i)``, the sources and the options. Refuses a folder that holds another dataset; a case
    whose two files exist is not made again (an interrupted run resumes)."""
    from .datalist import DataError, claim_dataset_folder

    out = Path(out_dir)
    claim_dataset_folder(out, SYNTHETIC_DATASET_NAME, "synthetic")
    sources = [str(s) for s in sources]
    for source in sources:
        if not Path(source).is_file():
            raise DataError(f"source label map '{source}' does not exist; give TotalSegmentator-style maps "
                            "(1 = spleen), e.g. bundle/data/sources/totalseg/s0001_labels.nii.gz.")
    options = CaseOptions.of(case_options)
    for mask in options.spleen_masks:
        if not Path(mask).is_file():
            raise DataError(f"spleen mask '{mask}' (option `spleen_masks`) does not exist.")
    stats = load_hu_stats(hu_stats)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for case in range(first_case, first_case + cases):
        name = f"spleen_{case}.nii.gz"
        paths = [out / "imagesTr" / name, out / "labelsTr" / name]
        source_name = Path(sources[case % len(sources)]).name
        if not all(p.is_file() for p in paths):
            source = load_source(sources[case % len(sources)], naming)
            image, label, affine, drawn = synthesize_case((seed, case), source, stats, options)
            for path, array in zip(paths[::-1], (label, image)):  # the image last: its presence marks the case
                nifti = nib.Nifti1Image(array, affine)
                nifti.header.set_xyzt_units("mm")
                nifti.header.set_qform(affine, code=1)
                nifti.header.set_sform(affine, code=1)
                partial = path.with_name(f".{path.name}")
                nib.save(nifti, partial)
                os.replace(partial, path)
            atomic_write_text(out / "cases" / f"spleen_{case}.json", json.dumps({"source": source_name, **drawn}))
            if log:
                log(f"case {case}: {image.shape}, {drawn['phase']}, spleen {drawn['spleen_ml']} mL")
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}", "source": source_name})
    uses_masks = bool(options.spleen_masks) and options.real_mask_share > 0
    description = {
        "name": SYNTHETIC_DATASET_NAME,
        "description": f"synthetic CT (Hounsfield units) from real label maps, seed {seed}",
        "reference": "spleen-kd bundle/data/synthetic.py; anatomy: TotalSegmentator v2 dataset (CC BY 4.0)"
                     + ("; spleens: Medical Segmentation Decathlon Task09 masks (CC BY-SA 4.0)" if uses_masks else ""),
        "licence": "CC BY-SA 4.0" if uses_masks else "CC BY 4.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": len(training),
        "numTest": 0,
        "seed": seed,
        "sources": [Path(s).name for s in sources],
        "options": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(options).items()
                    if k != "spleen_masks"} | {"spleen_masks": [Path(m).name for m in options.spleen_masks]},
        "training": training,
        "test": [],
    }
    description_path = out / "dataset.json"
    atomic_write_text(description_path, json.dumps(description, indent=2))
    return description_path


class RandSyntheticCTd(Randomizable, MapTransform):
    """On-the-fly variant: every call draws a new synthetic case from the label map at ``data[source_key]``,
    so every epoch sees new images. Yields channel-first ``image`` (HU) and ``label`` (0/1) MetaTensors with
    their affine, in place of ``LoadImaged`` + ``EnsureChannelFirstd`` in a training pipeline (no caching
    before it: put it in a ``Dataset``, not a ``CacheDataset``). ``case_options``: :class:`CaseOptions`."""

    def __init__(self, source_key: str = "source", image_key: str = "image", label_key: str = "label",
                 naming: str = "dataset", hu_stats: str | os.PathLike = HU_STATS_FILE, **case_options) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        self.source_key, self.image_key, self.label_key, self.naming = source_key, image_key, label_key, naming
        self.stats = load_hu_stats(hu_stats)
        self.options = CaseOptions.of(case_options)
        self._case_seed = 0

    def randomize(self, data=None) -> None:
        self._case_seed = int(self.R.randint(0, 2 ** 31 - 1))

    def __call__(self, data: dict) -> dict:
        if self.source_key not in data:
            raise KeyError(f"RandSyntheticCTd needs the label map's path under '{self.source_key}' in every item; "
                           f"got keys {sorted(data)}.")
        self.randomize()
        source = load_source(str(data[self.source_key]), self.naming)
        image, label, affine = make_synthetic_case(self._case_seed, source, self.stats, self.options)
        out = dict(data)
        affine = torch.as_tensor(affine, dtype=torch.float64)
        out[self.image_key] = MetaTensor(torch.from_numpy(image.astype(np.float32))[None], affine=affine)
        out[self.label_key] = MetaTensor(torch.from_numpy(label.astype(np.float32))[None], affine=affine.clone())
        return out
