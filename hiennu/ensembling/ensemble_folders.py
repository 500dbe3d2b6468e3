"""Ensembles of saved predictions: nnU-Net's ``nnUNetv2_ensemble`` on hiennu's files (``hiennu_ensemble``).

Each input folder holds the probability maps of one model's (or ensemble's) predictions of the same cases, as
``hiennu_predict --save-probabilities npz`` writes them (``CASE_prob.npz``; a fold's ``hiennu_train --npz``
validation ``CASE.npz`` is read too, :func:`probability_files` tells the two kinds of folder apart): float32 sigmoid probabilities ``(z, y, x)`` on the case's native grid, with
the grid stored beside them. The ensemble of a case is the mean of its maps, every folder weighing the same, and
its mask is ``mean >= 0.5`` (``uint8`` {0, 1}) on that grid: the same mean and threshold as ``hiennu_predict -m A
B`` (:mod:`hiennu.inference.configuration_ensemble`) and ``hiennu_find_best_configuration``'s ensembles, so
predicting with each model on its own machine and ensembling the folders afterwards gives the same masks.

Like nnU-Net's command it applies no post-processing: an ensemble's own ``postprocessing.json``
(``DatasetNNN_Name/ensembles/NAME/postprocessing.json``) is applied afterwards with ``hiennu_apply_postprocessing
-pp ... --images ... --probabilities OUT`` (``--save-probabilities`` keeps the mean maps that a judged-rule record
asks). The plans' size rule of the members (``min_component_voxels``, 0 in BONBID's plans) is not known here
either; ``hiennu_predict -m`` applies it.

Every input is checked (the same cases in every folder, readable maps, one grid per case) before anything is
written; each output file is written atomically, and an input folder is never written to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hiennu.ensembling.ensemble_cv import cv_mask
from hiennu.errors import HiennuError
from hiennu.inference.folder_prediction import write_probabilities
from hiennu.io.folders import IS, folder_relation, refuse_raw_data_output
from hiennu.io.image import IMAGE_ENDINGS, Geometry, write_image
from hiennu.io.probabilities import mean_probabilities, read_probability_map
from hiennu.log import get_logger, progress

log = get_logger(__name__)

PREDICTED_ENDING, VALIDATION_ENDING = "_prob.npz", ".npz"  # hiennu_predict --save-probabilities npz; hiennu_train --npz
DEFAULT_MASK_ENDING = ".mha"


def probability_files(folder: Path) -> dict[str, Path]:
    """Case id -> its probability map in ``folder``. A folder whose maps all end in ``_prob.npz`` is a prediction
    folder (``hiennu_predict --save-probabilities npz``: ``CASE_prob.npz``, so ``A_prob_prob.npz`` is case
    ``A_prob``); any other is a fold's validation folder (``CASE.npz``, so ``A_prob.npz`` there is case ``A_prob``,
    never a second map of case ``A``). A folder whose maps mostly, but not all, end in ``_prob.npz`` is refused,
    naming the others: one stray file made the whole prediction folder read as a validation folder, whose cases
    then all differed from the other folders'."""
    maps = sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(VALIDATION_ENDING))
    others = [p.name for p in maps if not p.name.endswith(PREDICTED_ENDING)]
    if others and len(others) < len(maps) / 2:
        raise HiennuError(f"-i {folder}: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''} "
                          f"{'is no map' if len(others) == 1 else 'are no maps'} CASE_prob.npz of hiennu_predict "
                          f"--save-probabilities npz, as the folder's other {len(maps) - len(others)} are; move "
                          f"{'it' if len(others) == 1 else 'them'} out of the folder")
    predicted = bool(maps) and not others
    ending = PREDICTED_ENDING if predicted else VALIDATION_ENDING
    return {p.name[: -len(ending)]: p for p in maps}


@dataclass(frozen=True)
class EnsembledCase:
    """One case of the ensemble: its id, its map in every input folder (in the folders' order), and the output
    mask's file ending."""

    case_id: str
    inputs: tuple[Path, ...]
    mask_ending: str


def plan_ensemble(input_dirs: Sequence[str | Path], out_dir: str | Path,
                  mask_ending: str | None = None) -> list[EnsembledCase]:
    """The cases to ensemble, after checking the folders: two or more different, existing folders, none of them
    the output folder or inside it (and the output not inside an input), each holding the same cases' maps.

    mask_ending: the masks' file ending (``.mha``, ``.nii.gz`` ...); default: the ending of the case's mask beside
    its map in the first folder (``CASE.<ending>``, as ``hiennu_predict`` leaves it), else ``.mha``."""
    dirs = [Path(d) for d in input_dirs]
    if len(dirs) < 2:
        raise HiennuError(f"-i: an ensemble needs two or more folders of probability maps, got {len(dirs)}")
    resolved = [d.resolve() for d in dirs]
    twice = next((d for k, d in enumerate(dirs) if resolved[k] in resolved[:k]), None)
    if twice is not None:
        raise HiennuError(f"-i: {twice} is named twice; each folder would weigh double in the mean")
    for d, r in zip(dirs, resolved):
        if not d.is_dir():
            raise HiennuError(f"-i: {d} is not a folder")
        relation = folder_relation(out_dir, d)
        if relation is not None:
            where = "the input folder" if relation == IS else "inside or around the input folder"
            raise HiennuError(f"-o {out_dir} is {where} {d}; choose an output folder apart from every input so no "
                              f"input can be overwritten")
    refuse_raw_data_output("-o", out_dir)
    if mask_ending is not None and mask_ending not in IMAGE_ENDINGS:
        raise HiennuError(f"--file-ending {mask_ending}: not an image ending hiennu writes; use one of "
                          f"{', '.join(IMAGE_ENDINGS)}")
    files = [probability_files(d) for d in dirs]
    if not files[0]:
        raise HiennuError(f"-i {dirs[0]}: no probability maps (CASE_prob.npz: predict with hiennu_predict "
                          f"--save-probabilities npz)")
    for d, found in zip(dirs[1:], files[1:]):
        missing, extra = sorted(set(files[0]) - set(found)), sorted(set(found) - set(files[0]))
        if missing or extra:
            what = (f"lacks case(s) {', '.join(missing[:5])}" if missing else
                    f"has case(s) {', '.join(extra[:5])} that {dirs[0]} lacks")
            raise HiennuError(f"-i {d} {what}{' ...' if len(missing or extra) > 5 else ''}; every folder must hold "
                              f"the maps of the same cases (predict them with hiennu_predict --save-probabilities "
                              f"npz)")
    cases = []
    for case in sorted(files[0]):
        ending = mask_ending or next((e for e in IMAGE_ENDINGS if (dirs[0] / f"{case}{e}").is_file()),
                                     DEFAULT_MASK_ENDING)
        cases.append(EnsembledCase(case, tuple(f[case] for f in files), ending))
    return cases


def _read_case(case: EnsembledCase) -> tuple[list[np.ndarray], Geometry]:
    """The case's maps, all on the first map's grid (else :class:`HiennuError` naming the case and both files)."""
    maps, reference = [], None
    for path in case.inputs:
        prob, geometry = read_probability_map(path, f"case {case.case_id}")
        if reference is None:
            reference = geometry
        else:
            diffs = reference.differences(geometry)
            if diffs:
                raise HiennuError(f"case {case.case_id}: {path} lies on another grid than {case.inputs[0]} "
                                  f"({'; '.join(diffs)}, the first folder's first); were both predicted from the "
                                  f"same images?")
        maps.append(prob)
    return maps, reference


def ensemble_folders(input_dirs: Sequence[str | Path], out_dir: str | Path, save_probabilities: bool = False,
                     mask_ending: str | None = None) -> list[str]:
    """Ensemble the probability maps of ``input_dirs`` into ``out_dir``: ``CASE.<ending>`` masks (mean >= 0.5, the
    maps' grid) and, with ``save_probabilities``, the mean maps ``CASE_prob.npz``. Returns the case ids.

    Every case of every folder is read and checked first (the second pass reads them again rather than holding
    every map in memory); nothing is written when one fails."""
    cases = plan_ensemble(input_dirs, out_dir, mask_ending)
    for case in progress(cases, desc="checking"):
        _read_case(case)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in progress(cases, desc="ensembling"):
        maps, geometry = _read_case(case)
        mean = mean_probabilities(maps)
        write_image(cv_mask(mean), geometry, out_dir / f"{case.case_id}{case.mask_ending}")
        if save_probabilities:
            write_probabilities(mean, geometry, out_dir / f"{case.case_id}{PREDICTED_ENDING}")
    log.info("ensembled %d case(s) of %d folders (mean probability >= 0.5) into %s", len(cases), len(input_dirs),
             out_dir)
    return [c.case_id for c in cases]


__all__ = ["EnsembledCase", "ensemble_folders", "plan_ensemble", "probability_files"]
