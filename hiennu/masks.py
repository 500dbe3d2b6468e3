"""Conventions about binary lesion masks that several stages share: Dice overlap and lesion-size bands.

Ground floor (imports nothing of hiennu): the planner's round-trip ceiling and stratified folds,
evaluation's metrics and reports, and post-processing selection all use these one definitions.

- :func:`dice`: ``2 |A ∩ B| / (|A| + |B|)`` of two masks (non-zero is lesion); 1.0 when both are
  empty.
- Lesion-size bands by lesion fraction of the brain volume, half-open intervals ``[low, high)``:
  ``<1%`` = [0, 0.01), ``1-5%`` = [0.01, 0.05), ``>5%`` = [0.05, inf); a fraction of exactly 0 is
  :data:`NO_LESION_BAND`.
"""

from __future__ import annotations

import math

import numpy as np

# lesion volume bands, as fractions of the brain volume: (name, lower bound inclusive, upper bound exclusive)
VOLUME_BANDS = (("<1%", 0.0, 0.01), ("1-5%", 0.01, 0.05), (">5%", 0.05, math.inf))
NO_LESION_BAND = "no lesion"


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
