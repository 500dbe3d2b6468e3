"""Cross-validation folds: 5 folds, seeded, stratified by lesion size band.

Bands by lesion fraction of the brain (:func:`hiennu.masks.volume_band`, half-open ``[low, high)``):
no lesion (0), ``<1%``, ``1-5%`` (from 1% up to, not including, 5%), ``>5%`` (5% and more). Within
each band the cases are shuffled with the seed and dealt to the folds in turn, the dealing
continuing across bands so fold sizes differ by at most one. ``splits_final.json`` is a list of
``{"train": [...], "val": [...]}``; once written it is never rewritten, so folds stay stable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json, write_json
from hiennu.log import get_logger
from hiennu.masks import NO_LESION_BAND, VOLUME_BANDS, volume_band
from hiennu.paths import splits_file_name

log = get_logger(__name__)

SPLITS_FILE = splits_file_name()  # splits_final.json, named once in hiennu.paths
DEFAULT_FOLDS = 5
DEFAULT_SPLIT_SEED = 12345
# the order in which the bands are dealt to the folds
BANDS = (NO_LESION_BAND,) + tuple(name for name, _, _ in VOLUME_BANDS)


def make_splits(lesion_fractions: dict[str, float], num_folds: int = DEFAULT_FOLDS,
                seed: int = DEFAULT_SPLIT_SEED) -> list[dict[str, list[str]]]:
    """Stratified folds over ``lesion_fractions`` (case id -> lesion fraction of the brain)."""
    cases = sorted(lesion_fractions)
    if len(cases) < num_folds:
        raise HiennuError(f"{len(cases)} training case(s) cannot be split into {num_folds} folds; "
                          f"add cases (at least {num_folds})")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    turn = 0
    for band in BANDS:
        members = [c for c in cases if volume_band(lesion_fractions[c]) == band]
        for c in rng.permutation(members).tolist() if members else []:
            folds[turn % num_folds].append(c)
            turn += 1
    return [{"train": sorted(c for c in cases if c not in set(val)), "val": sorted(val)} for val in folds]


def write_splits_if_absent(path: str | os.PathLike, lesion_fractions: dict[str, float],
                           num_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SPLIT_SEED) -> bool:
    """Write ``splits_final.json`` unless it exists; returns True when written."""
    path = Path(path)
    if path.exists():
        existing = read_json(path)
        known = {c for fold in existing for c in fold.get("val", [])}
        missing = sorted(set(lesion_fractions) - known)
        if missing:
            log.warning("%s: kept as is (folds stay stable), but %d case(s) are in no fold: %s; delete the file "
                        "to re-split", path, len(missing), ", ".join(missing[:5]))
        return False
    write_json(make_splits(lesion_fractions, num_folds, seed), path)
    log.info("wrote %s (%d folds, stratified by lesion size)", path, num_folds)
    return True
