"""Scoring every candidate on one cross-validation case, and summarizing the cases.

:func:`score_case` reads a case's label (and ADC/ZADC), each model's probabilities kept by its validation
(:func:`~hiennu.ensembling.cv_probabilities.read_probabilities`), checks that ``probabilities >= 0.5`` (less
the plans' small components) is the mask the validation wrote, makes each ensemble's mask from the mean of
its members' probabilities (written on the label's grid), and scores every candidate and the reference rule
``ZADC < -2`` inside the brain with the challenge metrics (:func:`hiennu.evaluation.metrics.case_metrics`:
Dice, MASD in mm, NSD at 2 mm, on the native grid). It runs in worker processes (``-np``), one case per job.

:func:`summaries` gives the mean of each metric over the cases with a seeded 95 % bootstrap interval of the
mean (:func:`hiennu.evaluation.evaluate.summarize`; MASD over the cases where it is defined, ``n``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hiennu.ensembling.cv_probabilities import read_probabilities
from hiennu.ensembling.ensemble_cv import cv_mask
from hiennu.io.probabilities import mean_probabilities
from hiennu.errors import HiennuError
from hiennu.evaluation.evaluate import json_safe, per_case_csv_path, summarize, write_per_case_csv
from hiennu.evaluation.metrics import SUMMARY_METRICS, case_metrics
from hiennu.io.atomic import write_json
from hiennu.io.image import Geometry, read_finite_image, read_image, write_image
from hiennu.masks import RULE_THRESHOLD, rule_mask
from hiennu.parallel import register_preload

register_preload(__name__)

RULE_NAME = f"rule: ZADC < {RULE_THRESHOLD:g}"
TABLE_METRICS = ("dice", "masd", "nsd")


@dataclass(frozen=True)
class MemberFiles:
    """One model's files for one case: its probabilities (``CASE.npz``) and the mask its validation wrote, the
    plans' size rule, and the command that re-validates the fold (for errors)."""

    name: str
    probabilities: Path
    mask: Path
    size_rule: int
    fix: str


@dataclass(frozen=True)
class EnsembleOutput:
    """One ensemble on one case: its name, its members (indices into :attr:`CaseJob.models`), its size rule and
    the file its mask goes to."""

    name: str
    members: tuple[int, ...]
    size_rule: int
    mask: Path


@dataclass(frozen=True)
class CaseJob:
    """Everything :func:`score_case` reads and writes for one case. adc/zadc: the raw channels (None when the
    dataset has no such channel; without ZADC the rule is not scored)."""

    case_id: str
    fold: int
    label: Path
    adc: Path | None
    zadc: Path | None
    models: tuple[MemberFiles, ...]
    ensembles: tuple[EnsembleOutput, ...]


def _row(job: CaseJob, ref: np.ndarray, mask: np.ndarray, spacing_zyx, brain_voxels: int | None) -> dict:
    return {"case_id": job.case_id, "fold": job.fold, **case_metrics(ref, mask, spacing_zyx, brain_voxels=brain_voxels)}


def _channel(path: Path | None, geometry: Geometry, job: CaseJob) -> np.ndarray | None:
    if path is None:
        return None
    image, image_geometry = read_finite_image(path, f"case {job.case_id}: image")
    diffs = geometry.differences(image_geometry)
    if diffs:
        raise HiennuError(f"case {job.case_id}: {path} lies on another grid than its label ({'; '.join(diffs)})")
    return image


def _check_mask(model: MemberFiles, mine: np.ndarray, geometry: Geometry, where: str) -> None:
    """The validation's mask must be the probabilities' mask: else the two came from different validations."""
    if not model.mask.is_file():
        raise HiennuError(f"{where}: no validation mask {model.mask} beside its probabilities; re-validate: "
                          f"{model.fix}")
    written, written_geometry = read_image(model.mask, dtype=np.uint8)
    diffs = geometry.differences(written_geometry)
    if diffs:
        raise HiennuError(f"{where}: validation mask {model.mask} lies on another grid than its label "
                          f"({'; '.join(diffs)}); re-validate: {model.fix}")
    differing = int(np.count_nonzero((written != 0) != (mine != 0)))
    if differing:
        raise HiennuError(f"{where}: validation mask {model.mask} differs from its probabilities >= 0.5 in "
                          f"{differing} voxel(s), so the two come from different validations; re-validate: {model.fix}")


def score_case(job: CaseJob) -> dict[str, dict]:
    """Candidate name (model, ensemble, :data:`RULE_NAME`) -> the case's metric row (``case_id``, ``fold`` and
    :func:`~hiennu.evaluation.metrics.case_metrics`' scalars); writes each ensemble's mask (uint8, the label's
    geometry). Raises :class:`HiennuError` naming the model, fold and case when a file is missing, lies on
    another grid, or a validation mask disagrees with its probabilities."""
    ref, geometry = read_image(job.label, dtype=np.uint8)
    ref = ref != 0
    adc, zadc = _channel(job.adc, geometry, job), _channel(job.zadc, geometry, job)
    brain_voxels = int(np.count_nonzero(adc)) if adc is not None else None
    spacing = geometry.spacing_zyx
    rows: dict[str, dict] = {}
    probabilities = []
    for model in job.models:
        where = f"model {model.name}, fold {job.fold}, case {job.case_id}"
        try:
            prob = read_probabilities(model.probabilities, geometry, where)
        except HiennuError as e:  # damaged, or from another validation: validating again writes it anew
            raise HiennuError(f"{e}; re-validate: {model.fix}") from None
        mask = cv_mask(prob, model.size_rule)
        _check_mask(model, mask, geometry, where)
        rows[model.name] = _row(job, ref, mask, spacing, brain_voxels)
        probabilities.append(prob)
    mask_geometry = Geometry(geometry.size_xyz, geometry.spacing_xyz, geometry.origin_xyz, geometry.direction,
                             "8-bit unsigned integer")
    for ensemble in job.ensembles:
        mask = cv_mask(mean_probabilities([probabilities[i] for i in ensemble.members]), ensemble.size_rule)
        write_image(mask, mask_geometry, ensemble.mask)
        rows[ensemble.name] = _row(job, ref, mask, spacing, brain_voxels)
    if zadc is not None:
        rows[RULE_NAME] = _row(job, ref, rule_mask(zadc, adc).astype(np.uint8), spacing, brain_voxels)
    return rows


def summaries(rows: Sequence[dict], metrics: Sequence[str] = TABLE_METRICS) -> dict[str, dict]:
    """Metric -> :func:`~hiennu.evaluation.evaluate.summarize` over the cases' rows (mean, 95 % bootstrap interval
    of the mean, ``n`` defined cases ...)."""
    return {m: summarize(r[m] for r in rows) for m in metrics}


def write_cv_summary(rows: Sequence[dict], path: Path, extra: dict) -> None:
    """An ensemble's ``validation/summary.json`` (every summary metric over its cases, the per-case rows, and
    ``extra``: members, folds, checkpoint ...) and the per-case CSV beside it; non-finite numbers as null."""
    rows = sorted(rows, key=lambda r: r["case_id"])
    summary = {**extra, "num_cases": len(rows), "metrics": summaries(rows, SUMMARY_METRICS), "per_case": rows}
    write_per_case_csv(list(rows), per_case_csv_path(path))
    write_json(json_safe(summary), path)
