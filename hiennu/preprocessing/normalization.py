"""Per-channel intensity normalization (schemes of :class:`~hiennu.plans.ChannelNormalization`).

Inputs are one channel on the target grid, ``(z, y, x)``, and the brain mask on the same grid
(boolean, the voxels where ADC is non-zero). Output is float32 of the same shape.

  - ``zscore_image``: (x - mean) / std over every voxel (the paper).
  - ``zscore_brain``: (x - mean) / std over brain voxels; outside the brain 0.
  - ``global_zscore``: clip to [clip_low, clip_high], (x - mean) / std with the plan's dataset-wide
    values; outside the brain 0 (the background of a skull-stripped map carries no signal).
  - ``atlas_zscore``: clip to [clip_low, clip_high], divide by std (atlas scale kept); outside the brain 0.
  - ``none``: unchanged (cast to float32).
"""

from __future__ import annotations

import numpy as np

from hiennu.plans import ChannelNormalization

_EPS = 1e-8


def _masked_stats(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    v = values.astype(np.float64, copy=False)
    return float(v.mean()), float(v.std())


def normalize_channel(array: np.ndarray, brain_mask: np.ndarray | None, norm: ChannelNormalization) -> np.ndarray:
    """Normalize one channel ``(z, y, x)`` as ``norm`` says; ``brain_mask`` None means every voxel is brain."""
    x = np.asarray(array, dtype=np.float32)
    mask = np.ones(x.shape, bool) if brain_mask is None else np.asarray(brain_mask, bool)
    if mask.shape != x.shape:
        raise ValueError(f"brain mask shape {mask.shape} differs from channel shape {x.shape}")
    scheme = norm.scheme
    if scheme == "none":
        return x.copy()
    if scheme == "zscore_image":
        mean, std = _masked_stats(x)
        return ((x - mean) / max(std, _EPS)).astype(np.float32)
    if scheme == "zscore_brain":
        mean, std = _masked_stats(x[mask])
        out = (x - mean) / max(std, _EPS)
    elif scheme == "global_zscore":
        low = -np.inf if norm.clip_low is None else norm.clip_low
        high = np.inf if norm.clip_high is None else norm.clip_high
        out = (np.clip(x, low, high) - norm.mean) / max(norm.std, _EPS)
    elif scheme == "atlas_zscore":
        low = -np.inf if norm.clip_low is None else norm.clip_low
        high = np.inf if norm.clip_high is None else norm.clip_high
        out = np.clip(x, low, high) / max(norm.std, _EPS)
    else:
        raise ValueError(f"unknown normalization scheme {scheme!r} for channel {norm.channel_name!r}")
    out = out.astype(np.float32)
    out[~mask] = 0.0
    return out
