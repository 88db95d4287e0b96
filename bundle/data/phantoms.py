"""Procedural abdominal CT phantoms in Hounsfield units, written in the MSD Task09_Spleen layout.

They stand in for MSD where it cannot be downloaded (tests, the offline demo). Each case has a
body outline with subcutaneous fat, muscle, liver, kidneys, aorta, a vertebra, and a spleen whose
size, lobulated shape, position, craniocaudal extent and contrast to its neighbours vary per case.
Noise, blur (partial volume) and low-contrast cases keep a tiny model well below Dice 1.0.
Deterministic per seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

AIR, FAT, MUSCLE, BONE = -1000.0, -100.0, 45.0, 550.0


def _ellipsoid(grid, centre, radii, wobble=None):
    """Boolean mask of a (optionally lobulated) ellipsoid; ``grid`` holds the mm coordinates."""
    x, y, z = grid
    r = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
    if wobble is not None:
        r = r + wobble
    return r < 1.0


def make_phantom(seed: int, shape: Sequence[int] = (128, 128, 48), spacing: Sequence[float] = (2.5, 2.5, 5.0)):
    """One case: ``(image_hu int16, label uint8, affine)`` in RAS+ voxel order (x grows towards the
    patient's right, y towards anterior, z towards superior)."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing, dtype=float)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]  # mm, centred
    grid = np.meshgrid(*axes, indexing="ij")
    x, y, z = grid
    half = np.array([a[-1] for a in axes])

    image = np.full(shape, AIR, dtype=np.float32)
    body_r = np.array([half[0] * rng.uniform(0.78, 0.9), half[1] * rng.uniform(0.6, 0.72)])
    body = (x / body_r[0]) ** 2 + (y / body_r[1]) ** 2 < 1
    fat_thickness = rng.uniform(8, 22)
    inner = (x / (body_r[0] - fat_thickness)) ** 2 + (y / (body_r[1] - fat_thickness)) ** 2 < 1
    image[body] = FAT
    image[inner] = MUSCLE + rng.normal(0, 3)
    # Visceral fat between the organs.
    image[inner & ((x / (body_r[0] * 0.7)) ** 2 + ((y - body_r[1] * 0.1) / (body_r[1] * 0.6)) ** 2 < 1)] = -60

    # Liver on the patient's right (high x), big, spanning most slices.
    liver_hu = rng.uniform(50, 75)
    liver = _ellipsoid(grid, (body_r[0] * 0.42, body_r[1] * 0.05, half[2] * 0.25),
                       (body_r[0] * 0.45, body_r[1] * 0.6, half[2] * 0.95)) & inner
    image[liver] = liver_hu

    # Kidneys, posterior, both sides, enhanced cortex.
    for side in (-1, 1):
        kidney = _ellipsoid(grid, (side * body_r[0] * 0.38, -body_r[1] * 0.45, -half[2] * 0.25),
                            (body_r[0] * 0.13, body_r[1] * 0.2, half[2] * 0.35))
        image[kidney & inner] = rng.uniform(140, 190)

    # Vertebra (posterior midline) and aorta anterior to it.
    vertebra = (x / 14) ** 2 + ((y + body_r[1] * 0.6) / 14) ** 2 < 1
    image[vertebra] = BONE + rng.normal(0, 40)
    image[(x / 7) ** 2 + ((y + body_r[1] * 0.32) / 7) ** 2 < 1] = rng.uniform(150, 220)

    # Spleen: patient's left posterior (low x, low y), varying size, shape, extent and contrast.
    scale = rng.uniform(0.7, 1.35)
    radii = np.array([body_r[0] * 0.17, body_r[1] * 0.28, half[2] * rng.uniform(0.35, 0.6)]) * scale
    centre = (-body_r[0] * rng.uniform(0.42, 0.6), -body_r[1] * rng.uniform(0.05, 0.35), half[2] * rng.uniform(-0.3, 0.5))
    freq = rng.uniform(0.04, 0.1, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    wobble = rng.uniform(0.15, 0.45) * (np.sin(freq[0] * x + phase[0]) * np.cos(freq[1] * y + phase[1])
                                       + 0.5 * np.sin(freq[2] * z + phase[2]))
    spleen = _ellipsoid(grid, centre, radii, wobble) & inner & ~vertebra
    low_contrast = rng.random() < 0.35
    spleen_hu = liver_hu + (rng.uniform(-8, 12) if low_contrast else rng.uniform(25, 70))
    image[spleen] = spleen_hu

    image = ndimage.gaussian_filter(image, sigma=(0.8, 0.8, 0.5))  # partial volume at the edges
    image += rng.normal(0, rng.uniform(10, 25), size=image.shape)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    return image, spleen.astype(np.uint8), affine


def make_phantom_dataset(out_dir: str | os.PathLike, cases: int = 16, seed: int = 0,
                         shape: Sequence[int] = (128, 128, 48), spacing: Sequence[float] = (2.5, 2.5, 5.0)) -> Path:
    """Write ``cases`` phantoms as ``imagesTr/``, ``labelsTr/`` and ``dataset.json``; return its path."""
    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for case in range(cases):
        image, label, affine = make_phantom(seed * 100_003 + case, shape, spacing)
        name = f"spleen_{case:03d}.nii.gz"
        for folder, array in (("imagesTr", image), ("labelsTr", label)):
            nifti = nib.Nifti1Image(array, affine)
            nifti.header.set_xyzt_units("mm")
            nib.save(nifti, out / folder / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {
        "name": "Spleen phantoms", "description": f"procedural abdominal CT phantoms, seed {seed}",
        "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
        "numTraining": cases, "numTest": 0, "training": training, "test": [],
    }
    path = out / "dataset.json"
    path.write_text(json.dumps(description, indent=2))
    return path
