"""Array operations that the MONAI serving path and the light one share, in numpy and SciPy only: the
weights of MONAI's anti-aliased linear resize, and the largest connected component. One implementation
for both paths, so that they cannot drift apart."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
from scipy import sparse


def gaussian_kernel(sigma: float, truncated: float = 4.0) -> np.ndarray:
    """MONAI's ``gaussian_1d(sigma, truncated, approx="erf")``: the Gaussian integrated over each tap, in
    float32 as MONAI computes it, returned as float64."""
    from scipy.special import erf

    tail = int(max(float(sigma) * truncated, 0.5) + 0.5)
    x = np.arange(-tail, tail + 1, dtype=np.float32)
    t = np.float32(0.70710678) / np.float32(abs(sigma))
    out = np.float32(0.5) * (erf(t * (x + np.float32(0.5))) - erf(t * (x - np.float32(0.5))))
    return np.clip(out.astype(np.float32), 0, None).astype(np.float64)


@functools.lru_cache(maxsize=32)
def resize_weights(in_size: int, out_size: int, sigma: float = 0.0, align_corners: bool | None = None) -> sparse.csr_matrix:
    """The ``out_size × in_size`` sparse matrix of one axis of MONAI's ``Resize`` in a linear mode: the
    zero-padded Gaussian of MONAI's anti-aliasing (``sigma``), then PyTorch's linear interpolation
    (``align_corners`` as in ``torch.nn.functional.interpolate``). float64; cached (do not modify it)."""
    rows = np.arange(out_size)
    if align_corners:
        source = rows * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        source = np.maximum((rows + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    weight = source - low
    taps = [(low, 1.0 - weight), (np.minimum(low + 1, in_size - 1), weight)]  # smoothed[low], smoothed[high]
    kernel = gaussian_kernel(sigma) if sigma > 0 else np.ones(1)
    radius = len(kernel) // 2  # smoothed[i] = sum_o kernel[o] * x[i + o - radius], zeros outside
    entries = []
    for columns, values in taps:
        for offset, value in enumerate(kernel):
            shifted = columns + offset - radius
            inside = (shifted >= 0) & (shifted < in_size)
            entries.append((rows[inside], shifted[inside], values[inside] * value))
    matrix = sparse.coo_matrix((np.concatenate([e[2] for e in entries]),
                                (np.concatenate([e[0] for e in entries]), np.concatenate([e[1] for e in entries]))),
                               shape=(out_size, in_size))
    return matrix.tocsr()  # duplicate entries (taps that meet) are summed


def antialias_sigmas(in_size, out_size, anti_aliasing: bool = True) -> list[float]:
    """MONAI's (skimage's) default anti-aliasing sigma per axis: ``(factor - 1) / 2`` where an axis shrinks."""
    factors = [i / o for i, o in zip(in_size, out_size)]
    if not anti_aliasing or all(f <= 1 for f in factors):
        return [0.0] * len(factors)
    return [max(0.0, (f - 1) / 2) for f in factors]


def resize_slices(volume: np.ndarray, size: int, sigmas, window: tuple[float, float] | None = None) -> np.ndarray:
    """``[Z, size, size]``: each axial slice of ``volume`` ``[X, Y, Z]`` windowed (``(v - low) / (high - low)``
    clipped to [0, 1]) and resized in-plane: the same floats as one :func:`resize_weights` product per axis
    over the whole windowed volume (the largest reduction first, as the MONAI path orders them), with
    ``sigmas`` (no smoothing along Z), moved to slices first.

    Slab by slab, so that every copy a sparse product needs is a slice that stays in the cache, whatever
    the volume's memory layout (NIfTI volumes arrive in Fortran order, where a whole-volume product's
    reshapes are strided copies of the whole volume), and the result is already in the network's layout."""
    if sigmas[2] > 0:
        raise ValueError("resize_slices does not smooth along the slice axis.")
    in_size = volume.shape[:2]
    axes = [a for a in (0, 1) if in_size[a] != size or sigmas[a] > 0]
    order = sorted(axes, key=lambda a: size / in_size[a])  # the largest reduction first
    matrices = {a: resize_weights(in_size[a], size, sigmas[a]).astype(np.float32) for a in axes}
    out = np.empty((volume.shape[2], size, size), dtype=np.float32)
    low, high = window if window is not None else (None, None)
    for z in range(volume.shape[2]):
        plane = volume[:, :, z]
        if window is not None:
            plane = np.clip((plane - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
        plane = plane.astype(np.float32, copy=False)  # [X, Y]
        for axis in order:  # each product over the plane's first axis: bring the axis there, contiguous
            rows = np.ascontiguousarray(plane if axis == 0 else plane.T)
            plane = matrices[axis] @ rows
            plane = plane if axis == 0 else plane.T
        out[z] = plane
    return out


def thresholded_resize(volume: np.ndarray, out_size, threshold: float) -> np.ndarray:
    """The whole-volume linear resize of ``volume`` to ``out_size`` (one :func:`resize_weights` product per axis,
    no smoothing) ``>= threshold`` as uint8, computed only where it can be true.

    Linear interpolation makes every output a convex combination of inputs, so an output whose inputs all
    lie below the threshold lies below it too: only the output box whose inputs reach the bounding box of
    the inputs at or above the threshold is resized, each of its voxels from the same inputs with the same
    weights in the same order as in the whole resize (the same floats). For a spleen's probability map
    brought back to a 512×512 grid that is a few per cent of the volume."""
    mask = np.zeros(tuple(int(n) for n in out_size), dtype=np.uint8, order="F")  # NIfTI's order
    box = foreground_box(volume >= threshold)
    if box is None:
        return mask
    out_box, in_box, matrices = [], [], {}
    for axis, (n_in, n_out) in enumerate(zip(volume.shape, out_size)):
        if n_in == n_out:
            out_box.append(box[axis])
            in_box.append(box[axis])
            continue
        weights = resize_weights(n_in, int(n_out), 0.0)
        rows = np.flatnonzero(weights[:, box[axis]].getnnz(axis=1))
        rows = slice(int(rows[0]), int(rows[-1]) + 1)
        columns = np.flatnonzero(weights[rows].getnnz(axis=0))
        columns = slice(int(columns[0]), int(columns[-1]) + 1)
        out_box.append(rows)
        in_box.append(columns)
        matrices[axis] = weights[rows][:, columns].astype(np.float32)
    out = volume[tuple(in_box)]
    for axis in sorted(matrices, key=lambda a: out_size[a] / volume.shape[a]):  # the largest reduction first
        moved = np.moveaxis(out, axis, 0)
        product = matrices[axis] @ moved.reshape(moved.shape[0], -1)
        out = np.moveaxis(product.reshape(-1, *moved.shape[1:]), 0, axis)
    mask[tuple(out_box)] = out >= np.float32(threshold)
    return mask


def label_components(mask: np.ndarray, fast: bool = True) -> tuple[np.ndarray, int]:
    """Connected components of a 3D boolean mask (26-connectivity) and their number: ``cc3d`` (about 7×
    faster than SciPy on a 512×512×100 mask) when it is installed and ``fast``, else ``scipy.ndimage.label``."""
    if fast and importlib.util.find_spec("cc3d") is not None:
        import cc3d

        labels = cc3d.connected_components(mask, connectivity=26, binary_image=True)
        return labels, int(labels.max(initial=0))
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))


def foreground_box(array: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of ``array``'s non-zero voxels (None if there are none), each axis's extent found
    inside the previous axes' extents, so a small foreground costs one pass over the volume."""
    box: list[slice] = []
    for axis in range(array.ndim):
        inner = array[tuple(box)]
        hits = np.flatnonzero(inner.any(axis=tuple(a for a in range(array.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 3D connected component (full connectivity) of a binary mask, found inside the
    foreground's bounding box; the input is returned unchanged when it has one component or none."""
    box = foreground_box(mask)
    if box is None:
        return mask
    labels, count = label_components(mask[box] > 0)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel(order="K"))  # "K": no copy in whichever layout the labels come
    sizes[0] = 0
    kept = mask.copy(order="K")  # the caller's memory layout
    kept[box][labels != np.argmax(sizes)] = 0
    return kept


NO_SPLEEN_LOGIT = -30.0  # the logit given to slices the located pass skips: probability ~1e-13


def located_logits(depth: int, run, threshold: float, stride: int = 4):
    """Logits of ``depth`` axial slices computed only where the spleen can be: ``run(indices)`` returns the
    network's logits for those slices (first axis: slice; numpy or torch). A first pass on every
    ``stride``-th slice finds the slices with a voxel at or above ``threshold`` (a probability); the
    slices from ``stride`` before the first to ``stride`` after the last of them are then segmented,
    and the others get :data:`NO_SPLEEN_LOGIT`. A spleen that no sampled slice shows (thinner than
    ``stride`` slices) leaves the first pass empty, and every slice is segmented. The network is 2D, so
    the slices it runs on get exactly the logits of a full pass. Returns ``(logits, slices run)``."""
    coarse = np.arange(0, depth, stride)
    first = run(coarse)
    logits = first.new_full((depth, *first.shape[1:]), NO_SPLEEN_LOGIT) if hasattr(first, "new_full") else \
        np.full((depth, *first.shape[1:]), NO_SPLEEN_LOGIT, dtype=first.dtype)
    logits[coarse] = first
    cut = float(np.log(threshold / (1.0 - threshold))) if 0.0 < threshold < 1.0 else 0.0
    flags = (first.reshape(len(coarse), -1) >= cut).any(1)
    positive = np.flatnonzero(flags.cpu().numpy() if hasattr(flags, "cpu") else flags)
    if len(positive):
        low, high = max(0, coarse[positive[0]] - stride + 1), min(depth, coarse[positive[-1]] + stride)
    else:
        low, high = 0, depth
    rest = np.setdiff1d(np.arange(low, high), coarse)
    if len(rest):
        logits[rest] = run(rest)
    return logits, len(coarse) + len(rest)
