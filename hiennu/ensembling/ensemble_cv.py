"""Ensembles of configurations on cross-validation: the candidates, the averaged probabilities, the masks,
and the ensemble's folder.

An ensemble of two or more trained models predicts a case with the mean of its members' sigmoid
probabilities, every member weighing the same (each member's own folds already averaged, as
``hiennu_predict`` averages them), thresholded at 0.5 (``p >= 0.5`` is lesion), less the components under
the members' largest ``min_component_voxels`` (the plans' size rule). On cross-validation each case's
probabilities are those its own fold kept (``fold_K/validation/CASE.npz``), so no case is predicted by a
network that saw it.

:class:`EnsembleStaging` writes every ensemble's CV masks into a hidden folder of the dataset's results and
moves each into its :class:`~hiennu.paths.EnsembleFolder` only on :meth:`EnsembleStaging.commit`, so a run
that fails part-way leaves no half-written ensemble (:meth:`EnsembleStaging.discard` removes the staging).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.inference.predictor import THRESHOLD
from hiennu.io.atomic import interrupts_deferred, staging_dir, write_json
from hiennu.paths import VALIDATION_DIR, EnsembleFolder, ensemble_dir_name
from hiennu.postprocessing.components import remove_small_components

MODEL, ENSEMBLE, RULE = "model", "ensemble", "rule"  # the kinds of row: RULE the reference (a candidate only with --rule-candidate)


def cv_mask(probabilities: np.ndarray, size_rule: int = 0) -> np.ndarray:
    """``probabilities >= 0.5`` less the 26-connected components under ``size_rule`` voxels, as the predictor
    makes a mask before any chosen post-processing; uint8 {0, 1} ``(z, y, x)``."""
    return remove_small_components((np.asarray(probabilities) >= THRESHOLD).astype(np.uint8), int(size_rule))


@dataclass(frozen=True)
class Candidate:
    """One trained model, or an ensemble of several: ``members`` are model folder names
    (``TRAINER__PLANS__CONFIG``), sorted."""

    members: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(sorted(self.members)))

    @property
    def kind(self) -> str:
        return MODEL if len(self.members) == 1 else ENSEMBLE

    @property
    def name(self) -> str:
        """The model folder's name, or the ensemble folder's (``ensemble___M1___M2``)."""
        return self.members[0] if len(self.members) == 1 else ensemble_dir_name(list(self.members))


EVERY = "every"  # every ensemble of two or more models (nnU-Net's find_best_configuration scores pairs only)
ALL_MODELS = "all"  # only the ensemble of all the models, e.g. an ensemble fixed before looking at the scores
NO_ENSEMBLES = "none"
ENSEMBLE_SETS = (EVERY, ALL_MODELS, NO_ENSEMBLES)


def ensemble_set(ensembles: bool | str) -> str:
    """``ensembles`` as one of :data:`ENSEMBLE_SETS`; True is :data:`EVERY` and False :data:`NO_ENSEMBLES` (the
    boolean of earlier versions). Anything else raises :class:`HiennuError`."""
    if isinstance(ensembles, bool):
        return EVERY if ensembles else NO_ENSEMBLES
    if ensembles not in ENSEMBLE_SETS:
        raise HiennuError(f"--ensembles must be one of {', '.join(ENSEMBLE_SETS)}, got {ensembles!r}")
    return str(ensembles)


#: Above this many ensembles, ``every`` is said to be large before the scoring starts (seven models make 120).
MANY_ENSEMBLES = 64


def candidates(model_names: Sequence[str], ensembles: bool | str = EVERY,
               max_ensemble_size: int | None = None) -> list[Candidate]:
    """Every model alone, then the ensembles ``ensembles`` asks for (:func:`ensemble_set`): every ensemble of two
    or more of them, smallest first (of at most ``max_ensemble_size`` members when given; 2 is nnU-Net's pairs);
    only the ensemble of all of them (when there are two or more); or none."""
    which = ensemble_set(ensembles)
    check_max_ensemble_size(max_ensemble_size)
    out = [Candidate((name,)) for name in model_names]
    if which == EVERY:
        largest = len(model_names) if max_ensemble_size is None else min(max_ensemble_size, len(model_names))
        for size in range(2, largest + 1):
            out += [Candidate(tuple(c)) for c in itertools.combinations(model_names, size)]
    elif which == ALL_MODELS and len(model_names) > 1:
        out.append(Candidate(tuple(model_names)))
    return out


def check_max_ensemble_size(max_ensemble_size: int | None) -> None:
    """None, or a whole number >= 2; anything else raises :class:`HiennuError`."""
    if max_ensemble_size is not None and (isinstance(max_ensemble_size, bool) or not isinstance(max_ensemble_size, int)
                                          or max_ensemble_size < 2):
        raise HiennuError(f"--max-ensemble-size must be a whole number of at least 2 (an ensemble has two or more "
                          f"models), got {max_ensemble_size!r}")


def count_ensembles(num_models: int, max_ensemble_size: int | None = None) -> int:
    """How many ensembles of two or more of ``num_models`` models there are (of at most ``max_ensemble_size``)."""
    largest = num_models if max_ensemble_size is None else min(max_ensemble_size, num_models)
    return sum(math.comb(num_models, k) for k in range(2, largest + 1))


def members_record(candidate: Candidate, folds: Sequence[int], checkpoint: str) -> dict:
    """The ensemble's ``members.json``: its member model folders, the folds and the checkpoint each member
    predicts with (what ``hiennu_predict -m`` reads for an ensemble)."""
    return {"members": list(candidate.members), "folds": [int(f) for f in folds], "checkpoint": checkpoint}


class EnsembleStaging:
    """Ensemble CV outputs written first under ``DatasetNNN_Name/.find_best_configuration-<random>/NAME/validation``,
    then moved into ``ensembles/NAME/validation`` by :meth:`commit`."""

    def __init__(self, dataset_results_dir: Path):
        self.dataset_results_dir = Path(dataset_results_dir)
        self.root = staging_dir(self.dataset_results_dir, prefix=".find_best_configuration-")

    def validation_dir(self, candidate: Candidate) -> Path:
        """Where the ensemble's CV masks and summary are written before :meth:`commit`."""
        return self.root / candidate.name / VALIDATION_DIR

    def folder(self, candidate: Candidate) -> EnsembleFolder:
        """The ensemble's folder once committed."""
        return EnsembleFolder.of(self.dataset_results_dir, list(candidate.members))

    def commit(self, candidate: Candidate, members: dict, postprocessing: dict) -> EnsembleFolder:
        """Move the staged ``validation/`` into the ensemble folder (replacing an earlier one whole), then write
        ``postprocessing.json`` and, last, ``members.json``; returns the folder. The earlier ``members.json`` and
        ``postprocessing.json`` are removed first, so a run killed part-way leaves a folder that is not an
        ensemble (no ``members.json``) rather than an old record beside new masks."""
        folder = self.folder(candidate)
        folder.path.mkdir(parents=True, exist_ok=True)
        old = None
        try:
            with interrupts_deferred():  # an interrupt between the renames left the old masks in a hidden folder
                folder.members.unlink(missing_ok=True)
                folder.postprocessing.unlink(missing_ok=True)
                if folder.validation_dir.exists():
                    old = Path(tempfile.mkdtemp(prefix=".validation.replaced-", dir=folder.path))
                    os.replace(folder.validation_dir, old / VALIDATION_DIR)
                os.replace(self.validation_dir(candidate), folder.validation_dir)
                write_json(postprocessing, folder.postprocessing)
                write_json(members, folder.members)
        finally:
            if old is not None and folder.validation_dir.exists():  # replaced: the old masks are garbage
                shutil.rmtree(old, ignore_errors=True)
        return folder

    def discard(self) -> None:
        """Remove the staging folder and whatever is left in it."""
        shutil.rmtree(self.root, ignore_errors=True)
