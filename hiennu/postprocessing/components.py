"""Connected components of a binary mask: removing the small ones, keeping those that touch a marker.

Components are 26-connected (:data:`hiennu.masks.FULL_CONNECTIVITY`, the one structure of the package).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hiennu.masks import FULL_CONNECTIVITY


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


def keep_components_touching(mask: np.ndarray, marker: np.ndarray) -> np.ndarray:
    """The 26-connected components of ``mask`` (z, y, x) that share at least one voxel with ``marker``; uint8 {0, 1}."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if not mask.any():
        return mask.astype(np.uint8)
    labels, n = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(labels[np.asarray(marker, dtype=bool) & mask])] = True
    keep[0] = False
    return keep[labels].astype(np.uint8)
