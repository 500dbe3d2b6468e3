"""Conventions about binary lesion masks that several stages share: Dice overlap, lesion-size bands, the
connectivity of a lesion, the brain of a case and the challenge's ZADC rule.

Ground floor (imports nothing of hiennu): the planner's round-trip ceiling and stratified folds,
evaluation's metrics and reports, and post-processing selection all use these one definitions.

- :func:`dice`: ``2 |A ∩ B| / (|A| + |B|)`` of two masks (non-zero is lesion); 1.0 when both are
  empty.
- Lesion-size bands by lesion fraction of the brain volume, half-open intervals ``[low, high)``:
  ``<1%`` = [0, 0.01), ``1-5%`` = [0.01, 0.05), ``>5%`` = [0.05, inf); a fraction of exactly 0 is
  :data:`NO_LESION_BAND`.
- :data:`FULL_CONNECTIVITY`: 26-connectivity (voxels touching by a face, an edge or a corner form one
  component), the one structure of every component count (post-processing, metrics, fingerprint).
- :func:`brain_mask`: the brain of a case is where its ADC map is non-zero (the maps are skull-stripped,
  background exactly 0).
- :data:`RULE_THRESHOLD` and :func:`rule_mask`: the challenge's reference rule, lesion where
  ``ZADC < -2`` (ZADC on its raw atlas z-score scale) inside the brain. The plans' rule prior, the
  baseline and the post-processing all take the threshold from here.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# lesion volume bands, as fractions of the brain volume: (name, lower bound inclusive, upper bound exclusive)
VOLUME_BANDS = (("<1%", 0.0, 0.01), ("1-5%", 0.01, 0.05), (">5%", 0.05, math.inf))
NO_LESION_BAND = "no lesion"

# 26-connectivity: voxels touching by a face, an edge or a corner belong to one component.
FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)

# the challenge's reference rule: lesion where ZADC (atlas z-score) < RULE_THRESHOLD inside the brain
RULE_THRESHOLD = -2.0


def brain_mask(adc: np.ndarray) -> np.ndarray:
    """The brain of a case: where its (skull-stripped) ADC map is non-zero; bool, same shape."""
    return np.asarray(adc) != 0


def rule_mask(zadc: np.ndarray, adc: np.ndarray | None, threshold: float = RULE_THRESHOLD) -> np.ndarray:
    """``ZADC < threshold`` inside the brain (:func:`brain_mask` of ``adc``; everywhere when ``adc`` is None);
    bool (z, y, x). ``zadc`` on its raw atlas z-score scale (the input image, before any normalization)."""
    mask = np.asarray(zadc) < threshold
    if adc is not None:
        mask &= brain_mask(adc)
    return mask


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient of two masks of one shape (bool, or non-zero = lesion); 1.0 when both are empty."""
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    total = int(ref.sum()) + int(pred.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(ref, pred).sum()) / total


def volume_band(lesion_fraction: float) -> str | None:
    """Name of the volume band of a lesion that fills ``lesion_fraction`` of the brain (NaN -> None)."""
    if lesion_fraction is None or math.isnan(lesion_fraction):
        return None
    if lesion_fraction == 0:
        return NO_LESION_BAND
    for name, low, high in VOLUME_BANDS:
        if low <= lesion_fraction < high:
            return name
    raise ValueError(f"lesion fraction {lesion_fraction} is negative")
