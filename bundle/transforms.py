"""Transforms that training and inference share, each equal to MONAI's own result and faster on a CPU.

- :class:`Resized`: MONAI's ``Resized``, linear modes as one sparse matrix product per axis (anti-aliasing included).
- :class:`CheckCTd`: refuses what is not a 3D CT in Hounsfield units, as the light path does.
- :class:`LargestComponentd`: the largest 3D connected component, labelled inside the foreground's
  bounding box only (with ``cc3d`` when it is installed).

Their arithmetic is in :mod:`bundle.arrays`, which the light serving path uses too.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Resize
from monai.transforms import Resized as MonaiResized
from monai.transforms.inverse import TraceableTransform
from monai.transforms.utils import scale_affine
from monai.utils import (TraceKeys, convert_to_dst_type, convert_to_tensor, ensure_tuple, ensure_tuple_rep,
                         fall_back_tuple, get_equivalent_dtype)

from .arrays import keep_largest_component, resize_weights
from .checks import check_ct


class CheckCTd(MapTransform):
    """Refuses, as an ``InputError`` naming the file, an image that is not a 3D CT in Hounsfield units
    (:func:`bundle.checks.check_ct`): placed right after ``LoadImaged``, before channels are added, so
    that inference, MONAI Label's infer task and the unlabelled images of distillation refuse the same
    inputs as the light path. ``allow_non_ct`` turns "empty" and "no air" into warnings."""

    def __init__(self, keys: KeysCollection, allow_non_ct: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.allow_non_ct = allow_non_ct

    def __call__(self, data):
        for key in self.key_iterator(data):
            image = data[key]
            source = str(getattr(image, "meta", {}).get("filename_or_obj", f"<{key}>"))
            check_ct(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image, source,
                     self.allow_non_ct)
        return data


class LargestComponentd(MapTransform):
    """Keeps the largest 3D connected component (full connectivity) of binary masks ``[1, H, W, D]``.

    Same result as ``KeepLargestConnectedComponentd(applied_labels=[1])`` on a binary mask, but labels
    only the bounding box of the foreground (:func:`bundle.arrays.keep_largest_component`), which for a
    spleen is a small part of the volume.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            array = convert_to_tensor(mask, track_meta=False).detach().cpu().numpy()[0]
            kept = keep_largest_component(array)
            if kept is not array:
                d[key] = convert_to_dst_type(torch.from_numpy(kept[None]), mask, dtype=mask.dtype)[0]
        return d


LINEAR_MODES = ("linear", "bilinear", "trilinear")


@functools.lru_cache(maxsize=32)
def resize_matrix(in_size: int, out_size: int, sigma: float = 0.0, align_corners: bool | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`bundle.arrays.resize_weights` as a PyTorch sparse CSR matrix of ``dtype``. Cached: a server
    resizes every volume between the same sizes (read-only, do not modify it)."""
    weights = resize_weights(in_size, out_size, sigma, align_corners)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is long-standing
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(weights.indptr.astype(np.int64)),
                                       torch.from_numpy(weights.indices.astype(np.int64)),
                                       torch.from_numpy(weights.data).to(dtype), size=weights.shape)


def separable_resize(image: torch.Tensor, out_size, sigma=0.0, align_corners: bool | None = None) -> torch.Tensor:
    """``[C, *spatial]`` resized axis by axis with :func:`resize_matrix` (one sparse product per axis
    that changes; the largest reduction first, so later products see the smallest array)."""
    out = image
    sigmas = ensure_tuple_rep(sigma, image.ndim - 1)
    axes = [a for a in range(1, image.ndim) if out_size[a - 1] != image.shape[a] or sigmas[a - 1] > 0]
    for axis in sorted(axes, key=lambda a: out_size[a - 1] / image.shape[a]):
        matrix = resize_matrix(out.shape[axis], out_size[axis - 1], sigmas[axis - 1], align_corners, out.dtype)
        moved = out.movedim(axis, 0)
        product = matrix @ moved.reshape(moved.shape[0], -1)
        out = product.reshape(-1, *moved.shape[1:]).movedim(0, axis)
    return out.contiguous()


class SeparableResize(Resize):
    """MONAI's ``Resize``; in the linear modes (not lazy, ``size_mode="all"``) each axis is one sparse
    matrix product (:func:`separable_resize`) with the Gaussian anti-aliasing folded in: the same result
    (to float rounding) several times faster on the CPU, the same recorded transform, and its inverse
    (``Invertd``) is computed the same way. Other modes are MONAI's own."""

    def __call__(self, img, mode=None, align_corners=None, anti_aliasing=None, anti_aliasing_sigma=None, dtype=None,
                 lazy=None):
        mode_ = self.mode if mode is None else mode
        align_corners_ = self.align_corners if align_corners is None else align_corners
        anti_aliasing = self.anti_aliasing if anti_aliasing is None else anti_aliasing
        sigma = self.anti_aliasing_sigma if anti_aliasing_sigma is None else anti_aliasing_sigma
        lazy_ = self.lazy if lazy is None else lazy
        in_size = tuple(int(s) for s in img.shape[1:])
        if (lazy_ or str(mode_) not in LINEAR_MODES or self.size_mode != "all"
                or len(ensure_tuple(self.spatial_size)) != len(in_size)):
            return super().__call__(img, mode, align_corners, anti_aliasing, anti_aliasing_sigma, dtype, lazy)
        out_size = tuple(int(s) for s in fall_back_tuple(self.spatial_size, in_size))
        dtype_ = get_equivalent_dtype(dtype or self.dtype or img.dtype, torch.Tensor)
        factors = [i / o for i, o in zip(in_size, out_size)]
        if not anti_aliasing or all(f <= 1 for f in factors):
            sigma = [0.0] * len(in_size)
        elif sigma is None:  # skimage's default, as MONAI
            sigma = [max(0.0, (f - 1) / 2) for f in factors]
        else:
            sigma = [s * int(f > 1) for s, f in zip(ensure_tuple_rep(sigma, len(in_size)), factors)]
        meta_info = TraceableTransform.track_transform_meta(
            img, sp_size=out_size, affine=scale_affine(in_size, out_size, align_corners=bool(align_corners_)),
            extra_info={"mode": mode_, "align_corners": align_corners_ if align_corners_ is not None else TraceKeys.NONE,
                        "dtype": str(dtype_)[6:], "new_dim": 0},
            orig_size=in_size, transform_info=self.get_transform_info(), lazy=False)
        data = convert_to_tensor(img, track_meta=False, dtype=dtype_)
        resized = separable_resize(data, out_size, sigma, align_corners_) if out_size != in_size else data
        out = convert_to_tensor(resized, dtype=torch.float32, track_meta=get_track_meta())
        return out.copy_meta_from(meta_info) if isinstance(out, MetaTensor) else out

    def inverse_transform(self, data, transform):
        extra = transform[TraceKeys.EXTRA_INFO]
        align_corners = extra["align_corners"]
        xform = SeparableResize(spatial_size=transform[TraceKeys.ORIG_SIZE], mode=extra["mode"],
                                align_corners=None if align_corners == TraceKeys.NONE else align_corners,
                                dtype=extra["dtype"])
        with xform.trace_transform(False):
            data = xform(data)
        for _ in range(extra["new_dim"]):
            data = data.squeeze(-1)
        return data


class Resized(MonaiResized):
    """``monai.transforms.Resized`` with :class:`SeparableResize`: the same arguments, result and inverse."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resizer = SeparableResize(spatial_size=self.resizer.spatial_size, size_mode=self.resizer.size_mode,
                                       lazy=self.resizer.lazy)
