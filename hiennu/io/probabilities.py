"""Probability maps: reading a case's map kept as ``.npz`` (``hiennu_train --npz``'s ``CASE.npz``, ``hiennu_predict
--save-probabilities npz``): the sigmoid probabilities, float32 ``(z, y, x)`` on the case's native grid, with the
grid (``spacing_xyz``, ``origin_xyz``, ``direction``) stored beside them.

and averaging the maps of an ensemble's members. One reader and one mean for every stage that uses them: the
configurations' scoring and ensembles (:mod:`hiennu.ensembling`) and the post-processing that asks the network
(:mod:`hiennu.postprocessing.selection`), so an ensemble's judge sees exactly the map its CV masks were made from.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.io.image import Geometry

PROBABILITIES_KEY = "probabilities"  # the array's key in a CASE.npz (hiennu_predict --save-probabilities npz)
GRID_KEYS = {"spacing_xyz": 3, "origin_xyz": 3, "direction": 9}  # stored beside it, with their number of values


def read_probability_map(path: Path, where: str) -> tuple[np.ndarray, Geometry]:
    """A ``CASE.npz``'s probability map (float32 ``(z, y, x)``, finite, in [0, 1]) and the grid stored beside it.
    where: the model, fold, folder or case, for errors (:class:`HiennuError`, one line naming the file)."""
    not_a_map = (f"{where}: {path} is not a probability map of hiennu_train --npz or hiennu_predict "
                 f"--save-probabilities npz")
    try:
        # zipfile reads each array to its end, which checks its CRC-32; np.load stops at the array's last byte,
        # so a damaged archive could be read as other numbers without a word
        with zipfile.ZipFile(path) as zf:
            arrays = {key: np.lib.format.read_array(io.BytesIO(zf.read(f"{key}.npy")), allow_pickle=False)
                      for key in (PROBABILITIES_KEY, *GRID_KEYS)}
        prob = np.asarray(arrays[PROBABILITIES_KEY], dtype=np.float32)
        grid = {key: np.asarray(arrays[key], dtype=np.float64).ravel() for key in GRID_KEYS}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise HiennuError(f"{not_a_map} ({e})") from None
    if prob.ndim != 3:
        raise HiennuError(f"{where}: {path} holds a {prob.ndim}D array, not a 3D probability map (z, y, x)")
    wrong = [f"{key} has {grid[key].size} values, not {n}" for key, n in GRID_KEYS.items() if grid[key].size != n]
    if wrong or not all(np.isfinite(v).all() for v in grid.values()):
        raise HiennuError(f"{not_a_map} (its grid: {'; '.join(wrong) or 'values not finite'})")
    geometry = Geometry(tuple(int(v) for v in reversed(prob.shape)), tuple(map(float, grid["spacing_xyz"])),
                        tuple(map(float, grid["origin_xyz"])), tuple(map(float, grid["direction"])))
    if not (np.isfinite(prob).all() and prob.min(initial=0.0) >= 0.0 and prob.max(initial=0.0) <= 1.0):
        raise HiennuError(f"{where}: {path} holds values outside [0, 1] or not finite; it is not a probability map")
    return prob, geometry


def read_probabilities(path: Path, reference: Geometry, where: str, reference_name: str = "label") -> np.ndarray:
    """A ``CASE.npz``'s probability map (float32 ``(z, y, x)``, :func:`read_probability_map`), which must lie on
    ``reference``'s grid (the label's, or the mask's: ``reference_name`` names it in errors): same size and, within
    :func:`hiennu.io.image.grid_differences`' tolerance, spacing, origin and direction (stored beside it). where: the
    model, fold and case, for errors."""
    prob, geometry = read_probability_map(path, where)
    diffs = reference.differences(geometry)
    if diffs:
        raise HiennuError(f"{where}: probabilities {path} lie on another grid than the {reference_name} "
                          f"({'; '.join(diffs)}, {reference_name} first)")
    return prob


def mean_probabilities(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """The members' mean probability map, every member weighing the same; float32, same shape ``(z, y, x)``."""
    if not probabilities:
        raise ValueError("an ensemble needs at least one member's probabilities")
    total = np.zeros(np.shape(probabilities[0]), dtype=np.float32)
    for prob in probabilities:
        total += np.asarray(prob, dtype=np.float32)
    return total / np.float32(len(probabilities))


__all__ = ["PROBABILITIES_KEY", "mean_probabilities", "read_probabilities", "read_probability_map"]
