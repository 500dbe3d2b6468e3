"""Folds with another split seed, to measure how much a result owes to one particular split.

``hiennu_plan_and_preprocess`` writes ``splits_final.json`` once (seed 12345) and never rewrites it.
:func:`ensure_seed_splits` writes the stratified folds of another seed ``S`` beside it, as
``splits_seed{S}.json`` (:func:`hiennu.paths.splits_file_name`), from the lesion fractions that
``dataset_fingerprint.json`` recorded, with the same dealing as the default split
(:func:`hiennu.planning.splits.make_splits`). An existing file is kept as it is, so a seed's folds
stay stable too. Models trained on them live in ``split_seed_{S}/`` under the dataset's results
(:func:`hiennu.training.fold_layout.model_folder`).
"""

from __future__ import annotations

from pathlib import Path

from hiennu.paths import preprocessed_root, resolve_dataset, splits_file_name
from hiennu.planning.fingerprint import FINGERPRINT_FILE, load_fingerprint
from hiennu.planning.splits import write_splits_if_absent


def ensure_seed_splits(dataset: str | int, split_seed: int | None, splits_dir: str | Path | None = None) -> Path:
    """The folds file of ``split_seed`` in the dataset's preprocessed folder (or in ``splits_dir``, e.g. to
    leave a shared preprocessed folder unwritten), written when absent.

    None (the default split) returns the preprocessed folder's ``splits_final.json`` untouched (it is
    written by ``hiennu_plan_and_preprocess``). Another seed needs ``dataset_fingerprint.json`` (a clear
    error names it when missing).
    """
    folder = preprocessed_root() / resolve_dataset(dataset)
    if split_seed is None:
        return folder / splits_file_name(None)
    path = Path(splits_dir or folder) / splits_file_name(split_seed)
    fingerprint = load_fingerprint(folder / FINGERPRINT_FILE)
    write_splits_if_absent(path, {c.case_id: c.lesion_fraction for c in fingerprint.cases}, seed=int(split_seed))
    return path
