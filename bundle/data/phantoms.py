"""Procedural abdominal CT phantoms in Hounsfield units, written in the MSD Task09_Spleen layout.

They stand in for MSD where it cannot be downloaded (tests, the offline demo). Each case has a body
outline with subcutaneous fat and an abdominal wall, bowel and visceral fat, a big liver, stomach,
kidneys, aorta and IVC, a vertebra with its canal, ribs, and a spleen whose size, lobulated shape,
position, craniocaudal extent and contrast vary per case. Some cases put the spleen within a few HU
of the liver; noise, organ texture and blur (partial volume) keep a tiny model well below Dice 1.0.

Voxel order is RAS+ like the real fixtures: x grows towards the patient's right (the spleen sits at
low x, the liver at high x), y towards anterior, z towards superior. The same seed gives
byte-identical arrays and files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..files import atomic_write_text

PHANTOM_DATASET_NAME = "SpleenPhantoms"
AIR, FAT, VISCERAL_FAT, MUSCLE, WATER = -1000.0, -100.0, -80.0, 45.0, 10.0


def _texture(rng: np.random.Generator, shape: Sequence[int], sigma: Sequence[float]) -> np.ndarray:
    """Smooth random field with unit spread (``sigma`` in voxels per axis): organ mottling, bowel loops."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-6)


def _ellipsoid(x, y, z, centre, radii, angle=0.0, wobble=None):
    """Boolean ellipsoid, turned by ``angle`` about z; ``wobble(phi, zeta)`` lobulates its surface."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / radii[0]
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / radii[1]
    w = dz / radii[2]
    radius = np.sqrt(u * u + v * v + w * w)
    limit = 1.0 if wobble is None else 1.0 + wobble(np.arctan2(v, u), w)
    return radius < limit


def make_phantom(seed: int | Sequence[int], shape: Sequence[int] = (128, 128, 48),
                 spacing: Sequence[float] = (2.5, 2.5, 5.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case: ``(image int16 HU, label uint8 0/1, affine)``; anatomy is laid out in mm, so any
    ``shape``/``spacing`` gives the same body, sampled differently."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    spacing = np.asarray(spacing, dtype=float)
    axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(shape, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    half = np.array([a[-1] for a in axes])

    # Body: an ellipse, a bit larger towards the head of the volume, with fat, wall and cavity.
    rx0, ry0 = half[0] * rng.uniform(0.78, 0.92), half[1] * rng.uniform(0.58, 0.72)
    rx, ry = rx0 * (1 + 0.04 * z / half[2]), ry0 * (1 + 0.03 * z / half[2])
    fat_mm, wall_mm = rng.uniform(6, 24), rng.uniform(7, 14)
    ring = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)  # 1 at the skin
    mean_r = (rx0 + ry0) / 2
    body = ring < 1
    wall = ring < 1 - fat_mm / mean_r
    cavity = ring < 1 - (fat_mm + wall_mm) / mean_r
    image = np.full(shape, AIR, dtype=np.float32)
    image[np.broadcast_to(body, shape)] = FAT
    image[np.broadcast_to(wall, shape)] = MUSCLE + rng.normal(0, 4)
    bowel = _texture(rng, shape, sigma=6.0 / spacing) > rng.uniform(-0.3, 0.4)  # loops vs mesenteric fat
    image[np.broadcast_to(cavity, shape)] = VISCERAL_FAT
    image[cavity & bowel] = rng.uniform(15, 45)

    # Spine (posterior midline): vertebral body with cortex, canal, paraspinal muscles; discs along z.
    spine_y = -ry0 * 0.62
    vertebra_r = rng.uniform(13, 18)
    vertebra_d = np.sqrt(x ** 2 + (y - spine_y) ** 2)
    image[np.broadcast_to(np.sqrt((x / 45) ** 2 + ((y - spine_y + 20) / 30) ** 2) < 1, shape) & (ring < 1)] = MUSCLE
    bone = rng.uniform(200, 300) + (rng.uniform(400, 650) - 250) * (vertebra_d > vertebra_r - 3)
    disc = np.cos(2 * np.pi * z / rng.uniform(28, 34) + rng.uniform(0, 2 * np.pi)) > 0.8
    vertebra = np.broadcast_to(vertebra_d < vertebra_r, shape)
    image[vertebra] = np.where(disc, 80.0, np.broadcast_to(bone, shape))[vertebra]
    canal = np.broadcast_to(np.sqrt(x ** 2 + (y - spine_y + vertebra_r + 7) ** 2) < 7, shape)
    image[canal] = 20
    image[np.broadcast_to(np.sqrt(x ** 2 + (y - spine_y + vertebra_r + 20) ** 2) < 6, shape)] = 600  # spinous process

    # Ribs: small bone sections along the wall except anteriorly, turning with z as ribs slope.
    angle = np.arctan2(y, x)
    rib_band = (ring > 1 - (fat_mm + wall_mm * 0.7) / mean_r) & (ring < 1 - (fat_mm + wall_mm * 0.1) / mean_r)
    rib_sections = np.cos(rng.integers(7, 10) * angle + z * rng.uniform(0.03, 0.08) + rng.uniform(0, 2 * np.pi)) > 0.9
    image[rib_band & rib_sections & (np.sin(angle) < 0.5) & (z > -half[2] * 0.2)] = rng.uniform(500, 800)

    soft = _texture(rng, shape, sigma=3.0 / spacing)  # organ mottling, a few HU

    # Liver on the patient's right (high x), anterior-lateral, mostly in the upper slices.
    # Contrast: usually a bright spleen; some cases match it to the liver, some enhance it weakly.
    contrast = rng.choice(["portal_venous", "like_liver", "weak"], p=[0.6, 0.25, 0.15])
    spleen_hu = rng.uniform(70, 95) if contrast == "weak" else rng.uniform(100, 130)
    liver_hu = spleen_hu - rng.uniform(-6, 10) if contrast == "like_liver" else rng.uniform(55, 75)
    liver = _ellipsoid(x, y, z, (rx0 * 0.38, ry0 * 0.08, half[2] * rng.uniform(0.2, 0.45)),
                       (rx0 * rng.uniform(0.48, 0.6), ry0 * rng.uniform(0.6, 0.75), half[2] * rng.uniform(0.6, 0.9)),
                       angle=rng.uniform(-0.3, 0.1)) & cavity
    image[liver] = liver_hu + 4 * soft[liver]

    # Kidneys: enhanced cortex around a darker medulla, both sides of the spine, lower down.
    kidney_hu = rng.uniform(150, 200)
    kidneys = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        centre = (side * rx0 * rng.uniform(0.3, 0.4), spine_y * 0.7, -half[2] * rng.uniform(0.05, 0.35))
        radii = np.array([rx0 * 0.13, ry0 * 0.2, rng.uniform(40, 60)])
        kidney = _ellipsoid(x, y, z, centre, radii, angle=side * 0.4) & cavity
        medulla = _ellipsoid(x, y, z, centre, radii * 0.55, angle=side * 0.4)
        image[kidney] = kidney_hu
        image[kidney & medulla] = kidney_hu - rng.uniform(40, 70)
        kidneys |= kidney

    # Aorta left-anterior of the spine; IVC on the right, as bright as a spleen can be.
    aorta = np.broadcast_to(np.sqrt((x + 12) ** 2 + (y - spine_y - vertebra_r - 12) ** 2) < rng.uniform(9, 13), shape)
    image[aorta] = rng.uniform(150, 220)
    ivc = np.broadcast_to(np.sqrt(((x - 22) / 12) ** 2 + ((y - spine_y - vertebra_r - 12) / 9) ** 2) < 1, shape)
    image[ivc & (z > -half[2] * 0.6)] = rng.uniform(100, 140)

    # Stomach: left upper quadrant, anterior-medial to the spleen; fluid with a gas pocket on top.
    stomach = _ellipsoid(x, y, z, (-rx0 * 0.3, ry0 * 0.2, half[2] * rng.uniform(0.25, 0.55)),
                         (rx0 * 0.25, ry0 * 0.3, half[2] * 0.35), angle=rng.uniform(-0.5, 0.5)) & cavity & ~liver
    image[stomach] = WATER + rng.uniform(0, 25)
    image[stomach & (y > ry0 * 0.2 + ry0 * 0.3 * rng.uniform(0.3, 0.7))] = AIR

    # Spleen: left posterior-lateral (low x, low y), lobulated, with a hilum notch on its medial side.
    scale = rng.uniform(0.65, 1.35)
    radii = np.array([rx0 * 0.2, ry0 * 0.32, half[2] * rng.uniform(0.25, 0.5)]) * scale
    centre = np.array([-rx0 * rng.uniform(0.5, 0.62), -ry0 * rng.uniform(0.05, 0.35), half[2] * rng.uniform(-0.2, 0.5)])
    tilt = rng.uniform(-0.7, 0.1)
    amplitude, phase = rng.uniform(0.03, 0.1, size=3), rng.uniform(0, 2 * np.pi, size=3)

    def lobulation(phi, zeta):
        return (amplitude[0] * np.sin(2 * phi + phase[0]) + amplitude[1] * np.sin(3 * phi + phase[1]) * np.cos(zeta * 2)
                + amplitude[2] * np.sin(5 * phi + 2 * zeta + phase[2]))

    notch = _ellipsoid(x, y, z, centre + radii * np.array([0.9, 0.5, 0.0]), radii * np.array([0.45, 0.5, 0.7]))
    spleen = _ellipsoid(x, y, z, centre, radii, angle=tilt, wobble=lobulation) & ~notch & cavity & ~kidneys & ~stomach
    image[spleen] = spleen_hu + 5 * soft[spleen]

    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.6, 0.9) / (spacing / spacing[0]) ** 0.5)
    image += rng.normal(0, rng.uniform(10, 25), size=shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    return image, spleen.astype(np.uint8), affine


def make_phantom_dataset(out_dir: str | os.PathLike, cases: int = 16, seed: int = 0,
                         shape: Sequence[int] = (128, 128, 48), spacing: Sequence[float] = (2.5, 2.5, 5.0)) -> Path:
    """Write ``cases`` phantoms as ``imagesTr/spleen_<i>.nii.gz``, ``labelsTr/...`` and ``dataset.json``
    (written last, so a folder with it is complete); return the path of ``dataset.json``.

    Case ``i`` depends only on ``(seed, i)``: more cases with the same seed keep the first ones.
    Refuses to write into a folder holding another dataset, whose files it could overwrite.
    """
    from .datalist import claim_dataset_folder

    out = Path(out_dir)
    claim_dataset_folder(out, PHANTOM_DATASET_NAME, "phantoms")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for case in range(cases):
        image, label, affine = make_phantom((seed, case), shape, spacing)
        name = f"spleen_{case}.nii.gz"
        for folder, array in (("imagesTr", image), ("labelsTr", label)):
            nifti = nib.Nifti1Image(array, affine)
            nifti.header.set_xyzt_units("mm")
            nifti.header.set_qform(affine, code=1)
            nifti.header.set_sform(affine, code=1)
            nib.save(nifti, out / folder / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {
        "name": PHANTOM_DATASET_NAME,
        "description": f"procedural abdominal CT phantoms (Hounsfield units), seed {seed}",
        "reference": "spleen-kd bundle/data/phantoms.py",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    description_path = out / "dataset.json"
    atomic_write_text(description_path, json.dumps(description, indent=2))
    return description_path
