"""Resampling between a case's native grid and the plans' fixed target grid, in index space.

The target grid covers the same physical extent as the native grid: voxel centres are aligned as
``torch.nn.functional.interpolate(align_corners=False)`` aligns them (the first and last voxel
*edges* coincide). All functions run on torch so the same code serves the GPU at inference; numpy
in gives numpy out, a tensor in gives a tensor on the same device.

Array order is numpy order: a volume is ``(z, y, x)``, a multi-channel volume ``(C, z, y, x)``;
sizes passed here are ``(z, y, x)`` voxel counts.

Label modes:
  - ``nearest``: PyTorch's ``nearest-exact`` (the source voxel whose centre is nearest). Going to a
    grid at least as large as the native one per axis and back restores every label exactly.
  - ``sdf``: the signed distance to the mask boundary (in voxels of the source grid, negative
    inside, boundary voxels at +-0.5) is interpolated trilinearly and thresholded at 0. Small
    lesions survive down-sampling better than with nearest neighbour.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# the interpolation modes geometry offers (plans.py lists which of them a plans field may name)
IMAGE_INTERPOLATIONS = ("linear", "nearest")
LABEL_MODES = ("nearest", "sdf")


def _to_tensor(array: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    if isinstance(array, torch.Tensor):
        return array, False
    return torch.from_numpy(np.ascontiguousarray(array)), True


def _check_size(size_zyx: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(int(s) for s in size_zyx)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"a grid size must be three positive voxel counts (z, y, x), got {tuple(size_zyx)}")
    return size  # type: ignore[return-value]


def _interpolate(t: torch.Tensor, size_zyx: tuple[int, int, int], mode: str) -> torch.Tensor:
    """Interpolate a (z, y, x), (C, z, y, x) or (B, C, z, y, x) floating tensor spatially."""
    if t.ndim not in (3, 4, 5):
        raise ValueError(f"expected a (z, y, x), (C, z, y, x) or (B, C, z, y, x) array, got shape {tuple(t.shape)}")
    lead = t.shape[:-3]
    x = t.reshape((1, -1) + tuple(t.shape[-3:]))
    if tuple(x.shape[-3:]) == size_zyx:
        out = x.clone()
    elif mode == "linear":
        out = F.interpolate(x, size=size_zyx, mode="trilinear", align_corners=False)
    else:
        out = F.interpolate(x, size=size_zyx, mode="nearest-exact")
    return out.reshape(tuple(lead) + size_zyx)


def resample_image_to_grid(array: np.ndarray | torch.Tensor, size_zyx: Sequence[int],
                           mode: str = "linear") -> np.ndarray | torch.Tensor:
    """Resampling of an image ``(z, y, x)`` or ``(C, z, y, x)`` to ``size_zyx``; float32 out.

    ``mode``: ``linear`` (trilinear) or ``nearest`` (``nearest-exact``: every grid voxel takes the
    value of the native voxel whose centre is nearest, so a threshold of the resampled map is the
    resampled threshold mask, and no value is invented between slices).
    """
    if mode not in IMAGE_INTERPOLATIONS:
        raise ValueError(f"unknown image interpolation {mode!r}; choose one of {', '.join(IMAGE_INTERPOLATIONS)}")
    t, was_numpy = _to_tensor(array)
    out = _interpolate(t.to(torch.float32), _check_size(size_zyx), mode)
    return out.numpy() if was_numpy else out


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (voxels) of a binary ``(z, y, x)`` mask: negative inside, boundary voxels +-0.5.

    An empty mask gives +1 everywhere and a full one -1 (no boundary to measure from).
    """
    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.ones(mask.shape, np.float32)
    if mask.all():
        return -np.ones(mask.shape, np.float32)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, 0.5 - inside, outside - 0.5).astype(np.float32)


def _resample_label(label: np.ndarray | torch.Tensor, size_zyx: Sequence[int], mode: str) -> np.ndarray | torch.Tensor:
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label interpolation {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    size = _check_size(size_zyx)
    t, was_numpy = _to_tensor(label)
    if mode == "nearest":
        out = _interpolate(t.to(torch.float32), size, "nearest") > 0.5
    else:
        arr = t.detach().cpu().numpy()
        if arr.ndim == 3:
            sdf = signed_distance(arr)
        else:
            lead = arr.shape[:-3]
            flat = arr.reshape((-1,) + arr.shape[-3:])
            sdf = np.stack([signed_distance(m) for m in flat]).reshape(lead + arr.shape[-3:])
        out = _interpolate(torch.from_numpy(sdf).to(t.device), size, "linear") < 0
    out = out.to(torch.uint8)
    return out.numpy() if was_numpy else out


def resample_label_to_grid(label: np.ndarray | torch.Tensor, size_zyx: Sequence[int],
                           mode: str = "nearest") -> np.ndarray | torch.Tensor:
    """Binary mask ``(z, y, x)`` or ``(C, z, y, x)`` (non-zero = lesion) to ``size_zyx``; uint8 {0, 1} out."""
    return _resample_label(label, size_zyx, mode)


def resample_label_to_native(label: np.ndarray | torch.Tensor, native_size_zyx: Sequence[int],
                             mode: str = "nearest") -> np.ndarray | torch.Tensor:
    """A mask on the grid back to the native size ``(z, y, x)``; uint8 {0, 1} out.

    Same operation as :func:`resample_label_to_grid`; named for the direction so callers read well.
    """
    return _resample_label(label, native_size_zyx, mode)


def resample_probabilities_to_native(prob: np.ndarray | torch.Tensor, native_size_zyx: Sequence[int],
                                     mode: str = "linear") -> np.ndarray | torch.Tensor:
    """Probability (or logit) maps on the grid back to the native size; float32, on the input's device.

    ``prob``: ``(z, y, x)``, ``(C, z, y, x)`` or ``(B, C, z, y, x)``; the leading axes are kept.
    ``mode``: ``linear`` (trilinear, then threshold at 0.5 for a mask) or ``nearest``.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"unknown prediction interpolation {mode!r}; choose 'linear' or 'nearest'")
    t, was_numpy = _to_tensor(prob)
    out = _interpolate(t.to(torch.float32), _check_size(native_size_zyx), mode)
    return out.numpy() if was_numpy else out
