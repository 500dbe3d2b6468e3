"""Surface distances between two binary masks, after Nikolov et al. (DeepMind surface-distance).

The surface of a mask is made of *surface elements* (surfels): every 2x2x2 neighbourhood of
voxels (a cube whose corners are voxel centres) that holds both foreground and background
voxels. Its 8 corners form an 8-bit neighbourhood code; the marching-cubes triangles of that
code give the surfel's area in mm². Distances between surfaces are measured between the cube
positions, in mm, and every average over a surface is weighted by surfel area, so that a result
does not depend on how finely a surface is sampled.

Arrays are numpy order ``(z, y, x)``; every spacing here is given in the arrays' axis order
(``spacing_zyx`` in mm). The functions are exact re-implementations: they agree with the
``surface-distance`` package to floating-point rounding (see ``tests/test_metrics.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from skimage import measure

# Bit weight of each corner of a 2x2x2 neighbourhood, indexed [dz, dy, dx] (the published
# convention: the corner at offset (0, 0, 0) is the highest bit).
NEIGHBOURHOOD_BITS = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.uint8)


@functools.cache
def _index_space_normals() -> np.ndarray:
    """Triangle normals of every neighbourhood code, on a unit grid: array (256, T, 3), zero-padded.

    Each normal is the cross product of two triangle edges in ``(z, y, x)`` index units, so its
    length is twice the triangle's area. A code with more than four foreground corners uses the
    triangles of its complement (the same surface seen from the other side); this resolves the
    ambiguous marching-cubes cases the way the published lookup table does.
    """
    per_code: list[np.ndarray] = []
    for code in range(256):
        if code in (0, 255):
            per_code.append(np.zeros((0, 3)))
            continue
        base = code if bin(code).count("1") <= 4 else 255 - code
        cube = ((base & NEIGHBOURHOOD_BITS) > 0).astype(np.float64)
        verts, faces, _, _ = measure.marching_cubes(cube, 0.5, method="lorensen")
        tri = verts[faces]
        per_code.append(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
    most = max(len(n) for n in per_code)
    table = np.zeros((256, most, 3))
    for code, normals in enumerate(per_code):
        table[code, : len(normals)] = normals
    return table


@functools.lru_cache(maxsize=64)
def surfel_area_table(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Area in mm² of the surface inside a 2x2x2 neighbourhood, per code: float64 array (256,)."""
    sz, sy, sx = (float(s) for s in spacing_zyx)
    # scaling the axes by (sz, sy, sx) scales a triangle normal by (sy*sx, sz*sx, sz*sy)
    scaled = _index_space_normals() * np.array([sy * sx, sz * sx, sz * sy])
    return 0.5 * np.sqrt((scaled ** 2).sum(axis=-1)).sum(axis=-1)


def neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit neighbourhood code of every 2x2x2 cube that touches ``mask`` (bool (z, y, x)).

    The mask is padded with one background voxel on every side, so the result has shape
    ``mask.shape + 1`` and cube ``(i, j, k)`` has corners at voxels ``i-1..i, j-1..j, k-1..k``.
    """
    padded = np.zeros(tuple(s + 2 for s in mask.shape), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask
    out_shape = tuple(s + 1 for s in mask.shape)
    codes = np.zeros(out_shape, dtype=np.uint8)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                corner = padded[dz: dz + out_shape[0], dy: dy + out_shape[1], dx: dx + out_shape[2]]
                bit = int(NEIGHBOURHOOD_BITS[dz, dy, dx]).bit_length() - 1
                codes |= corner << np.uint8(bit)
    return codes


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each surfel of one surface to the other surface, and the surfels' areas (mm²).

    ``ref_to_pred[i]`` is the distance from reference surfel ``i`` (area ``ref_areas[i]``) to the
    nearest prediction surfel; likewise ``pred_to_ref`` / ``pred_areas``. A surface that does not
    exist gives empty arrays; distances to a surface that does not exist are ``inf``.
    """

    ref_to_pred: np.ndarray
    pred_to_ref: np.ndarray
    ref_areas: np.ndarray
    pred_areas: np.ndarray


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box (tuple of slices) that holds every foreground voxel of ``mask``; None if empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _nearest_distances(from_pts: np.ndarray, to_pts: np.ndarray, to_border: np.ndarray,
                       spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from each point of ``from_pts`` (N, 3 cube indices) to the nearest of ``to_pts``.

    ``to_border`` is ``to_pts`` as a dense bool grid: points on it are at distance 0 without a search.
    """
    distances = np.zeros(len(from_pts))
    if len(to_pts) == 0:
        distances[:] = np.inf
        return distances
    away = ~to_border[tuple(from_pts.T)]
    if not away.any():
        return distances
    search = from_pts[away]
    _, nearest = cKDTree(to_pts * spacing).query(search * spacing, k=1)
    # recompute from integer offsets, in the same order of operations as scipy's exact EDT
    delta = (to_pts[nearest] - search).astype(np.float64) * spacing
    delta *= delta
    distances[away] = np.sqrt(delta[:, 0] + delta[:, 1] + delta[:, 2])
    return distances


def surface_distances(ref: np.ndarray, pred: np.ndarray, spacing_zyx) -> SurfaceDistances:
    """Surfel distances and areas between ``ref`` and ``pred`` (bool arrays (z, y, x), same shape).

    Only the bounding box of both masks is processed (plus the one-voxel rim that closes the
    surfaces); nearest surfels are found with a k-d tree on the surfel positions, which gives
    the exact Euclidean distance transform's values at the points where they are needed.
    """
    if ref.shape != pred.shape or ref.ndim != 3:
        raise ValueError(f"masks must be 3D and of equal shape, got {ref.shape} and {pred.shape}")
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    empty = np.zeros(0)
    box = bounding_box(ref | pred)
    if box is None:
        return SurfaceDistances(empty, empty, empty, empty)
    areas = surfel_area_table(tuple(float(s) for s in spacing))
    borders, points, surfel_areas = [], [], []
    for mask in (ref, pred):
        codes = neighbourhood_codes(mask[box])
        border = (codes != 0) & (codes != 255)
        borders.append(border)
        points.append(np.argwhere(border))
        surfel_areas.append(areas[codes[border]])
    return SurfaceDistances(
        ref_to_pred=_nearest_distances(points[0], points[1], borders[1], spacing),
        pred_to_ref=_nearest_distances(points[1], points[0], borders[0], spacing),
        ref_areas=surfel_areas[0], pred_areas=surfel_areas[1])


def average_surface_distances(sd: SurfaceDistances) -> tuple[float, float]:
    """Area-weighted mean distance (mm) reference -> prediction and prediction -> reference."""
    def weighted(d: np.ndarray, a: np.ndarray) -> float:
        total = a.sum()
        return float((d * a).sum() / total) if total > 0 else float("nan")
    return weighted(sd.ref_to_pred, sd.ref_areas), weighted(sd.pred_to_ref, sd.pred_areas)


def surface_dice(sd: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalized surface Dice: area of both surfaces within ``tolerance_mm`` of the other, over total area."""
    total = sd.ref_areas.sum() + sd.pred_areas.sum()
    if total == 0:
        return float("nan")
    close = sd.ref_areas[sd.ref_to_pred <= tolerance_mm].sum() + sd.pred_areas[sd.pred_to_ref <= tolerance_mm].sum()
    return float(close / total)


def _area_percentile(d: np.ndarray, a: np.ndarray, percent: float) -> float:
    if len(d) == 0:
        return float("inf")
    order = np.argsort(d, kind="stable")
    cumulative = np.cumsum(a[order]) / a.sum()
    index = min(int(np.searchsorted(cumulative, percent / 100.0)), len(d) - 1)
    return float(d[order][index])


def robust_hausdorff(sd: SurfaceDistances, percent: float = 95.0) -> float:
    """Larger of the two directed area-weighted ``percent``-th percentile distances (mm)."""
    return max(_area_percentile(sd.ref_to_pred, sd.ref_areas, percent),
               _area_percentile(sd.pred_to_ref, sd.pred_areas, percent))
