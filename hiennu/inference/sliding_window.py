"""Sliding-window prediction over a volume larger (or smaller) than the training patch.

nnU-Net's scheme: windows of the patch size overlap by half (step 0.5 of the patch) and cover the
volume exactly (the first window starts at 0, the last ends at the border, the rest are spread
evenly between); each window's prediction is weighted by a Gaussian centred on the window
(sigma 1/8 of the patch per axis, scaled to a maximum of 1, with a floor at the smallest non-zero
weight so border voxels never get weight 0), and the weighted sum is divided by the summed weights.
A volume smaller than the patch along an axis is zero-padded (centred) to the patch and cropped back.
Where the windows go (:func:`hiennu.windows.window_starts`) and how large a case's window is
(:meth:`hiennu.plans.Configuration.inference_window_zyx`) live on the ground floor, :mod:`hiennu.windows`.

Written here rather than taken from MONAI (``sliding_window_inference``), which is not a dependency,
or from nnU-Net, which ties it to its predictor; the whole scheme is about fifty lines of torch.
Arrays are ``(C, z, y, x)`` tensors; sizes are ``(z, y, x)`` voxels.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hiennu.windows import STEP_FRACTION, window_starts

SIGMA_FRACTION = 1.0 / 8


@lru_cache(maxsize=8)
def _gaussian_numpy(patch_zyx: tuple[int, int, int], sigma_fraction: float) -> np.ndarray:
    axes = []
    for n in patch_zyx:
        centre = (n - 1) / 2.0
        sigma = max(n * sigma_fraction, 1e-6)
        axes.append(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight = weight / weight.max()
    weight = np.maximum(weight, weight[weight > 0].min())
    return weight.astype(np.float32)


def gaussian_weight(patch_zyx: Sequence[int], sigma_fraction: float = SIGMA_FRACTION,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """The importance map ``(z, y, x)`` of one window: maximum 1 at the centre, no zeros."""
    return torch.from_numpy(_gaussian_numpy(tuple(int(n) for n in patch_zyx), float(sigma_fraction))).to(device)


def _pad_to_patch(data: torch.Tensor, patch_zyx: Sequence[int]) -> tuple[torch.Tensor, list[slice]]:
    """Zero-pad ``(C, z, y, x)`` so every axis is at least the patch; returns it and the slices of the original."""
    pads, keep = [], []
    for n, p in zip(data.shape[1:], patch_zyx):
        extra = max(0, int(p) - int(n))
        before = extra // 2
        pads.append((before, extra - before))
        keep.append(slice(before, before + int(n)))
    if any(a or b for a, b in pads):
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        data = F.pad(data, flat)
    return data, keep


@torch.inference_mode()
def sliding_window_predict(predict: Callable[[torch.Tensor], torch.Tensor], data: torch.Tensor,
                           patch_zyx: Sequence[int], windows_per_batch: int = 1,
                           step_fraction: float = STEP_FRACTION) -> torch.Tensor:
    """Gaussian-weighted mean of ``predict`` over overlapping windows of ``data``.

    predict: maps a window batch ``(B, C, pz, py, px)`` to per-voxel values ``(B, pz, py, px)``
    (probabilities or logits); data: ``(C, z, y, x)`` on the device the values should live on.
    Returns ``(z, y, x)`` float32 on ``data``'s device.
    """
    if data.ndim != 4:
        raise ValueError(f"expected a (C, z, y, x) volume, got shape {tuple(data.shape)}")
    patch = tuple(int(p) for p in patch_zyx)
    padded, keep = _pad_to_patch(data, patch)
    shape = tuple(padded.shape[1:])
    starts = list(itertools.product(*(window_starts(n, p, step_fraction) for n, p in zip(shape, patch))))
    weight = gaussian_weight(patch, device=padded.device)
    total = torch.zeros(shape, dtype=torch.float32, device=padded.device)
    norm = torch.zeros(shape, dtype=torch.float32, device=padded.device)
    for i in range(0, len(starts), max(1, int(windows_per_batch))):
        chunk = starts[i:i + max(1, int(windows_per_batch))]
        slices = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in chunk]
        batch = torch.stack([padded[(slice(None),) + sl] for sl in slices])
        values = predict(batch).float()
        for sl, v in zip(slices, values):
            total[sl] += v * weight
            norm[sl] += weight
    return (total / norm)[tuple(keep)]
