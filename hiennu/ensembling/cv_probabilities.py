"""A trained model's cross-validation probabilities: collecting them and checking they can be compared.

Every model a choice is made among must hold, for each fold of the split, the validation that
``hiennu_train ... --npz`` leaves (:mod:`hiennu.training.native_validation`): ``validation/summary.json``
(the checkpoint that predicted, the cases scored) and ``validation/CASE.npz`` beside each mask
``validation/CASE<ending>``. :func:`collect_model_cv` checks one model; :func:`check_comparable` checks
that several were trained on the same dataset, the same splits and validated with the same checkpoint.
Every failure is one :class:`~hiennu.errors.HiennuError` line naming the model, fold or case and giving the
command that fixes it (:func:`train_command`); the checks only read, so nothing is written when one fails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file
from hiennu.io.checkpoint import BEST, FINAL, stale_validation_problem
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.io.probabilities import PROBABILITIES_KEY, read_probabilities
from hiennu.log import get_logger
from hiennu.paths import (CONTINUE, RETRAIN, TRAIN, VALIDATE, ModelFolder, plans_file_name, splits_file_name,
                          train_command)
from hiennu.plans import PREDICTOR_IGNORED_FIELDS, configuration_differences, load_plans, model_inference_window
from hiennu.postprocessing.commands import check_folds
from hiennu.postprocessing.selection import plans_size_rule

log = get_logger(__name__)


@dataclass(frozen=True)
class ModelCV:
    """One trained model's cross-validation, checked.

    path: the model folder ``TRAINER__PLANS__CONFIG``; fold_of: case id -> the fold that held it out
    (the cases each fold's validation summary scored); checkpoint: the checkpoint file every fold's
    validation was predicted with; size_rule: the plans' ``min_component_voxels`` (the components the
    validation removed from ``probabilities >= 0.5``); dataset: the model folder's ``dataset.json``.
    """

    path: Path
    fold_of: dict[str, int]
    checkpoint: str
    size_rule: int
    dataset: DatasetJson

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def folds(self) -> list[int]:
        return sorted(set(self.fold_of.values()))

    def probabilities(self, case_id: str) -> Path:
        return ModelFolder(self.path).validation_probabilities(self.fold_of[case_id], case_id)

    def mask(self, case_id: str, ending: str) -> Path:
        return ModelFolder(self.path).validation_dir(self.fold_of[case_id]) / f"{case_id}{ending}"

    def cases_of(self, fold: int) -> list[str]:
        return sorted(c for c, f in self.fold_of.items() if f == fold)


def split_validation_cases(preprocessed_dir: Path, folds: Sequence[int]) -> dict[int, list[str]]:
    """Fold -> its validation cases in the dataset's ``splits_final.json``; every fold asked for must be there."""
    dataset = Path(preprocessed_dir).name
    return splits_file_validation_cases(
        Path(preprocessed_dir) / splits_file_name(), folds,
        f"the folds of the models are read from it; run hiennu_plan_and_preprocess -d {dataset}",
        "restore the splits_final.json the models were trained with")


def splits_file_validation_cases(path: Path, folds: Sequence[int] | None, missing: str,
                                 invalid: str) -> dict[int, list[str]]:
    """Fold -> its validation cases in the folds file ``path`` (a list of ``{"train": [...], "val": [...]}``, as
    hiennu and nnU-Net write ``splits_final.json``); folds None: every fold of the file. missing / invalid: how to fix
    a missing file / one that is no such list or holds a case out twice."""
    path = Path(path)
    splits = read_json_file(path, missing, invalid)
    if not (isinstance(splits, list) and all(isinstance(s, dict) and isinstance(s.get("val"), list) for s in splits)):
        raise HiennuError(f"{path}: must be a list of {{\"train\": [...], \"val\": [...]}} entries; {invalid}")
    folds = range(len(splits)) if folds is None else folds
    missing_folds = [f for f in folds if not 0 <= f < len(splits)]
    if missing_folds:
        raise HiennuError(f"{path}: has {len(splits)} folds, fold(s) {', '.join(map(str, missing_folds))} do not exist; "
                          f"choose folds with -f among 0-{len(splits) - 1}")
    out = {f: sorted(str(c) for c in splits[f]["val"]) for f in folds}
    seen: dict[str, int] = {}
    for f, cases in out.items():
        for case in cases:
            other = seen.setdefault(case, f)
            if other != f or cases.count(case) > 1:
                raise HiennuError(f"{path}: case {case} is a validation case of fold {other} and of fold {f}; the "
                                  f"folds must hold out disjoint cases ({invalid})")
    return out


def collect_model_cv(model_dir: Path, folds: Sequence[int], dataset: str) -> ModelCV:
    """Check one model folder and return its :class:`ModelCV`.

    The folder, its ``plans.json`` and ``dataset.json`` exist; every fold of ``folds`` exists and was trained with
    the folder's plans (:func:`hiennu.postprocessing.commands.check_folds`); each fold was validated (a
    ``validation/summary.json`` naming its cases and checkpoint, the same checkpoint in every fold) and kept its
    probabilities (``CASE.npz`` for every case it scored). dataset: ``DatasetNNN_Name``, for the fix commands.
    """
    model_dir = Path(model_dir)
    model = ModelFolder(model_dir)
    name = model_dir.name
    if not model_dir.is_dir():
        raise HiennuError(f"model {name}: {model_dir} not found; train its folds with probabilities, e.g. "
                          f"{train_command(model_dir, folds[0], TRAIN, dataset=dataset)} (and the other folds)")
    for fold in folds:
        if not model.fold_dir(fold).is_dir():
            raise HiennuError(f"model {name}, fold {fold}: {model.fold_dir(fold)} not found; train it: "
                              f"{train_command(model_dir, fold, TRAIN, dataset=dataset)}")
    try:
        check_folds(model_dir, folds, validation=False)  # _validated_cases names a stale one, with --npz
    except HiennuError as e:
        raise HiennuError(f"model {name}, {e}") from None
    if not model.dataset_json.is_file():
        raise HiennuError(f"model {name}: {model.dataset_json} missing, so the dataset it was trained on is unknown; "
                          f"retrain it: {train_command(model_dir, folds[0], RETRAIN, dataset=dataset)}")
    fold_of: dict[str, int] = {}
    checkpoints: dict[int, str] = {}
    for fold in folds:
        cases, checkpoints[fold] = _validated_cases(model_dir, fold, dataset)
        for case in cases:
            if case in fold_of:
                raise HiennuError(f"model {name}: case {case} was validated in fold {fold_of[case]} and fold {fold}; "
                                  f"the folds must hold out disjoint cases (were they trained on different splits?)")
            fold_of[case] = fold
            if not model.validation_probabilities(fold, case).is_file():
                fix = train_command(model_dir, fold, VALIDATE, best=checkpoints[fold] == BEST, dataset=dataset)
                raise HiennuError(f"model {name}, fold {fold}, case {case}: no probabilities "
                                  f"{model.validation_probabilities(fold, case)} (its validation kept none); "
                                  f"re-validate with them: {fix}")
    first = checkpoints[folds[0]]
    for fold in folds:
        if checkpoints[fold] != first:
            fix = train_command(model_dir, fold, VALIDATE, best=first == BEST, dataset=dataset)
            raise HiennuError(f"model {name}, fold {fold}: validated with {checkpoints[fold]}, fold {folds[0]} with "
                              f"{first}; re-validate it: {fix}")
    return ModelCV(model_dir, fold_of, first, plans_size_rule(model_dir), load_dataset_json(model.dataset_json))


def _validated_cases(model_dir: Path, fold: int, dataset: str) -> tuple[list[str], str]:
    """(the cases, the checkpoint) that ``fold_K/validation/summary.json`` records."""
    model = ModelFolder(model_dir)
    path = model.validation_summary(fold)
    fix = train_command(model_dir, fold, VALIDATE, dataset=dataset)
    where = f"model {model_dir.name}, fold {fold}"
    if not (model.fold_dir(fold) / FINAL).is_file() and not path.is_file():  # --val refuses an unfinished training
        raise HiennuError(f"{where}: its training has not finished (no {FINAL}, no validation); finish it: "
                          f"{train_command(model_dir, fold, CONTINUE, dataset=dataset)}")
    if not path.is_file():
        raise HiennuError(f"{where}: no validation ({path} not found); validate it with probabilities: {fix}")
    summary = read_json_file(path, "", f"re-validate it: {fix}")
    rows = summary.get("per_case") if isinstance(summary, dict) else None
    checkpoint = summary.get("checkpoint", BEST) if isinstance(summary, dict) else None
    if (not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and isinstance(r.get("case_id"), str)
                                                           for r in rows) or not isinstance(checkpoint, str)):
        raise HiennuError(f"{where}: {path} names no validated cases or checkpoint; re-validate it: {fix}")
    stale = stale_validation_problem(model.fold_dir(fold), path, model_inference_window(model_dir))
    if stale:
        fix = train_command(model_dir, fold, VALIDATE, best=checkpoint == BEST, dataset=dataset)
        raise HiennuError(f"{where}: {stale}; re-validate it: {fix}")
    return sorted(r["case_id"] for r in rows), checkpoint


def check_comparable(models: Sequence[ModelCV], split_cases: dict[int, list[str]], raw_dataset: DatasetJson,
                     dataset: str, splits_path: Path) -> None:
    """Refuse models that cannot be compared case by case: trained on another dataset (``dataset.json`` channels
    or labels), on other splits (the cases a fold validated differ between models, or from ``splits_final.json``),
    or validated with different checkpoints. dataset: ``DatasetNNN_Name``, for the fix commands."""
    first = models[0]
    for model in models[1:]:
        differences = _dataset_differences(first.dataset, model.dataset)
        if differences:
            raise HiennuError(f"model {model.name} was trained on another dataset than {first.name} "
                              f"({'; '.join(differences)}); retrain it on {dataset}: "
                              f"{train_command(model.path, model.folds[0], RETRAIN, dataset=dataset)} "
                              f"(and every other fold)")
    differences = _dataset_differences(raw_dataset, first.dataset)
    if differences:
        raise HiennuError(f"the models were trained on another dataset than the raw {dataset} "
                          f"({'; '.join(differences)}, raw first); give the raw dataset they were trained on")
    for fold, expected in split_cases.items():
        for model in models[1:]:
            _same_cases(first.cases_of(fold), model.cases_of(fold), f"model {model.name}, fold {fold}",
                        f"{first.name}'s fold {fold}",
                        f"the two were trained on different splits; retrain it on {splits_path}: "
                        f"{train_command(model.path, fold, RETRAIN, dataset=dataset)}")
        _same_cases(expected, first.cases_of(fold), f"model {first.name}, fold {fold}",
                    f"fold {fold} of {splits_path}",
                    f"it was trained on another split; restore the splits_final.json it was trained with, or retrain "
                    f"it: {train_command(first.path, fold, RETRAIN, dataset=dataset)}")
    for model in models[1:]:
        if model.checkpoint != first.checkpoint:
            fix = train_command(model.path, model.folds[0], VALIDATE, best=first.checkpoint == BEST, dataset=dataset)
            raise HiennuError(f"model {model.name} was validated with {model.checkpoint}, {first.name} with "
                              f"{first.checkpoint}; re-validate its folds alike, e.g. {fix}")


def warn_replanned(models: Sequence[ModelCV], preprocessed_dir: Path) -> None:
    """Warn about each model trained with plans that the dataset's plans file of the same name has since replaced
    (re-planned after it was trained; fields the predictor ignores aside). Not an error: every model is scored,
    ensembled and predicts with its own folder's plans, in native geometry, so models of different plans compare
    case by case; but a user who re-planned and retrained some configurations learns which were not retrained."""
    for model in models:
        parts = ModelFolder(model.path).name
        current = Path(preprocessed_dir) / plans_file_name(parts.plans) if parts else None
        if current is None or not current.is_file():
            continue
        now = load_plans(current).configurations.get(parts.configuration)
        if now is None:
            continue
        trained = load_plans(ModelFolder(model.path).plans).configuration(parts.configuration)
        diffs = configuration_differences(dataclasses.asdict(trained), now, ignore=PREDICTOR_IGNORED_FIELDS)
        if diffs:
            log.warning("model %s was trained with other plans than %s holds now (%s): it is scored as trained; "
                        "to train it on the current plans, e.g. %s (and its other folds)", model.name, current,
                        "; ".join(diffs), train_command(model.path, model.folds[0], RETRAIN))


def _dataset_differences(reference: DatasetJson, other: DatasetJson) -> list[str]:
    out = []
    for field in ("channel_names", "labels"):
        a, b = getattr(reference, field), getattr(other, field)
        if a != b:
            out.append(f"{field} {a} vs {b}")
    return out


def _same_cases(expected: list[str], found: list[str], where: str, what: str, fix: str) -> None:
    extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    if extra or missing:
        shown = "; ".join(part for part in (f"not in {what}: {', '.join(extra[:5])}" if extra else "",
                                            f"missing: {', '.join(missing[:5])}" if missing else "") if part)
        raise HiennuError(f"{where}: validated other cases than {what} ({shown}); {fix}")


__all__ = ["ModelCV", "PROBABILITIES_KEY", "check_comparable", "collect_model_cv", "read_probabilities",
           "split_validation_cases"]
