"""Removing small connected components from a binary mask (post-processing of predictions)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 26-connectivity: voxels touching by a face, an edge or a corner belong to one component.
FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """``mask (z, y, x)`` without its 26-connected components of fewer than ``min_voxels`` voxels.

    Returns a new uint8 array {0, 1}; ``min_voxels <= 1`` returns the mask unchanged (as uint8).
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if min_voxels <= 1 or not mask.any():
        return mask.astype(np.uint8)
    labels, n = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels].astype(np.uint8)
