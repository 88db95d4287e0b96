"""Reading and writing NIfTI fast: what MONAI's loader and writer do, without the cache-hostile transpositions.

- :class:`NiftiReader`: NIfTI voxels C-ordered in cache-sized blocks, the transposition MONAI needs, 3× faster.
- :class:`NiftiWriter`: masks handed to nibabel in NIfTI's (Fortran) order, so that it need not transpose them.
(:func:`bundle.serving.runtime.use_fast_gzip` makes nibabel read and write ``.nii.gz`` through ISA-L.)

Training and inference configs both load through :class:`NiftiReader` (``image_readers``).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from monai.data import NibabelReader, NibabelWriter


def c_ordered(array: np.ndarray, dtype: torch.dtype | None = None, block: int = 16) -> np.ndarray:
    """``np.ascontiguousarray(array, dtype)`` for a Fortran-ordered volume, copied ``block`` slices of the last
    axis at a time so that reads and writes stay in cache: ~3× faster than numpy's single pass on 2 cores."""
    source = torch.from_numpy(array)
    out = torch.empty(array.shape, dtype=dtype or source.dtype)
    for start in range(0, array.shape[-1], block):
        out[..., start:start + block] = source[..., start:start + block]
    return out.numpy()


def f_ordered(array: np.ndarray) -> np.ndarray:
    """``np.asfortranarray(array)`` for a C-ordered volume, by :func:`c_ordered` on its transpose."""
    return c_ordered(array.T).T


class NiftiReader(NibabelReader):
    """MONAI's ``NibabelReader`` that hands ``LoadImage`` C-ordered float32 voxels.

    NIfTI stores voxels in Fortran order and MONAI makes every loaded array C-contiguous, in numpy's
    cache-hostile single pass (~0.2 s for a 512×512×100 CT on 2 cores, about as long as decompressing it);
    :func:`c_ordered` does it in a third of that, converting to float32 (``LoadImage``'s default dtype) on
    the way and applying the NIfTI scaling (``scl_slope``/``scl_inter``) in float32 afterwards. Arrays it
    cannot do so (GPU loading, unusual voxel types) are MONAI's."""

    FAST_TYPES = ("int8", "uint8", "int16", "int32", "int64", "float32", "float64")

    def _get_array_data(self, img, filename):
        proxy = img.dataobj
        if self.to_gpu or not nib.is_proxy(proxy) or proxy.dtype.name not in self.FAST_TYPES:
            return super()._get_array_data(img, filename)
        raw = np.asanyarray(proxy.get_unscaled())
        if raw.ndim < 3 or not raw.flags.f_contiguous:
            return super()._get_array_data(img, filename)
        out = c_ordered(raw, torch.float32)
        slope, inter = float(proxy.slope), float(proxy.inter)
        if slope != 1.0:
            out *= slope
        if inter != 0.0:
            out += inter
        return out


class NiftiWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` that gives nibabel the volume already in Fortran order (NIfTI's), by
    :func:`f_ordered`; nibabel would otherwise transpose it in numpy while writing, 0.14 s of the 0.15 s it
    takes to write a 512×512×100 mask on 2 cores. Use it as ``SaveImaged(writer=...)``."""

    @classmethod
    def create_backend_obj(cls, data_array, affine=None, dtype=None, **kwargs):
        image = super().create_backend_obj(data_array, affine=affine, dtype=dtype, **kwargs)
        array = image.dataobj
        if isinstance(array, np.ndarray) and array.ndim >= 3 and array.flags.c_contiguous and not array.flags.f_contiguous:
            image = nib.nifti1.Nifti1Image(f_ordered(array), image.affine, header=image.header, extra=image.extra,
                                           file_map=image.file_map)
        return image
