"""``inference_information.json``: what ``hiennu_find_best_configuration`` scored, what it chose and why, and
how to predict with it.

The file lies in the dataset's results folder (:data:`hiennu.paths.INFERENCE_INFORMATION_FILE`)::

    {"dataset": "Dataset001_BONBID", "folds": [0, 1, 2, 3, 4], "case_ids": [...],
     "metrics": "per case on the native grid: Dice, MASD (mm, cases where defined), NSD (2 mm); ...",
     "postprocessing_metrics": "each candidate's own post-processing ...: pooled ..., nested ...",
     "candidates": [{"name": "TrainerDiceFocal__hiennuPlans__2d", "kind": "model", "members": [...],
                     "path": "TrainerDiceFocal__hiennuPlans__2d",
                     "metrics": {"dice": {"mean": ..., "ci95_low": ..., "ci95_high": ..., "n": ...},
                                 "masd": ..., "nsd": ...},                     # raw: no post-processing
                     "postprocessing": {"record": "TrainerDiceFocal__hiennuPlans__2d/postprocessing.json",
                                        "chosen_name": ..., "action": ..., "this_run_choice": ...,
                                        "nested_choices": {"0": ..., ...}, "pooled": {...}, "nested": {...}}},
                    {"name": "ensemble___A___B", "kind": "ensemble", "path": "ensembles/ensemble___A___B", ...}],
     "reference": {"name": "rule: ZADC < -2", "kind": "rule", "metrics": ...,   # same cases
                   "path": null | "baseline_zadc",                     # a folder when --rule-candidate
                   "postprocessing": {"record": null, "action": "reference, not written", ...}},
     "selection": {"criterion": "postprocessed" | "raw", "rule": "...", "num_candidates": 3,
                   "by_postprocessed": ..., "by_raw": ..., "note": "..."},
     "chosen": {"name": ..., "kind": "model" | "ensemble" | "rule", "members": [...], "folds": [...],
                "checkpoint": "checkpoint_final.pth" (null for the rule), "path": ...,
                "postprocessing": {... as the candidate's ...}},
     "paired_test": {"method": "<chosen> + post-processing (nested)",
                     "reference": "rule: ZADC < -2 + post-processing (nested)", "num_cases": 37,
                     "metrics": ["dice", "masd", "nsd"], "note": "...",
                     "rows": [{"metric": "dice", "n_pairs": 37, "mean_difference": ..., "median_difference": ...,
                               "statistic": ..., "p_value": ..., "p_holm": ...}, ...]},
     "predict_command": "hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER ...", "provenance": {...},
     "nested_choice": null | {"method": "fully nested choice ...", "how": "...", "criterion": "postprocessed",
                              "num_candidates": 3,
                              "per_fold": [{"fold": 0, "chosen": ..., "raw_dice": ..., "nested_dice": ...,
                                            "raw_dice_on_fold": ..., "postprocessing": ..., "num_cases": 8,
                                            "dice": ...}, ...],
                              "metrics": {"dice": {...}, "masd": {...}, "nsd": {...}},
                              "per_case": [{"case_id": ..., "fold": 0, "candidate": ..., "dice": ..., "masd": ...,
                                            "nsd": ..., "raw_dice": ...}, ...],
                              "paired_test": {... as above, method "fully nested choice ..."},
                              "raw_metrics": {"dice": {...}}}}

``nested_choice`` (``--nested-choice``, :mod:`hiennu.ensembling.nested_choice`) is null when not asked for. With
``--rule-candidate`` the reference rule competes too; when it is chosen, ``chosen`` is the rule (kind ``rule``, path
``baseline_zadc``, its record written there as a rule folder) and ``paired_test`` tests the best model or ensemble
against it. Non-finite
numbers are written as null. Files written before candidates had their own post-processing (no ``selection``,
``paired_test`` or per-candidate ``postprocessing``) still load: chosen by raw Dice, no test; files without
``nested_choice`` load without it.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hiennu.ensembling.choice import RAW, Selection
from hiennu.evaluation.evaluate import json_safe
from hiennu.ensembling.ensemble_cv import ENSEMBLE, RULE
from hiennu.ensembling.nested_choice import NestedChoice
from hiennu.ensembling.rule_comparison import PairedTest
from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file, write_json
from hiennu.io.checkpoint import BEST, FINAL
from hiennu.paths import INFERENCE_INFORMATION_FILE, parse_model_dir_name

METRICS_NOTE = ("per case on the native grid: Dice, MASD (mm; mean over the cases where it is defined, n), NSD "
                "(surface Dice at 2 mm); mean over the pooled cross-validation cases with a seeded 95 % bootstrap "
                "interval of the mean; every candidate's mask is its probabilities (an ensemble's: the members' "
                "mean) >= 0.5 less the plans' small components, without post-processing")
POSTPROCESSING_NOTE = ("each candidate's own post-processing, chosen on its CV masks as "
                       "hiennu_determine_postprocessing chooses it (the rule's on its rule masks, same folds), scored "
                       "per case with the same metrics: pooled = its choice made and scored on every case (flatters "
                       "it); nested = each fold's choice made on the other folds only, applied to the fold (the "
                       "honest estimate of what ships)")


@dataclass(frozen=True)
class CandidateScores:
    """One scored row: a model, an ensemble or the reference rule. path: its folder relative to the dataset's
    results folder (None for the rule); metrics: metric -> summary (mean, ci95_low, ci95_high, n ...) without
    post-processing; postprocessing: its own post-processing and the scores with it
    (:meth:`hiennu.ensembling.candidate_postprocessing.PostprocessingOutcome.to_dict`; None in older files)."""

    name: str
    kind: str
    members: tuple[str, ...]
    path: str | None
    metrics: dict[str, dict]
    postprocessing: dict[str, Any] | None = None

    def mean(self, metric: str = "dice") -> float:
        """The raw mean (no post-processing)."""
        return _mean(self.metrics, metric)

    def nested_mean(self, metric: str = "dice") -> float:
        """The mean with its post-processing, nested (NaN when there is none)."""
        return _mean((self.postprocessing or {}).get("nested"), metric)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "members": list(self.members), "path": self.path,
                "metrics": self.metrics, "postprocessing": self.postprocessing}

    @classmethod
    def from_dict(cls, d: dict) -> "CandidateScores":
        return cls(d["name"], d["kind"], tuple(d["members"]), d["path"], d["metrics"], d.get("postprocessing"))


def _mean(metrics: dict[str, dict] | None, metric: str) -> float:
    value = None if metrics is None else (metrics.get(metric) or {}).get("mean")
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class ChosenConfiguration:
    """The candidate chosen (:mod:`hiennu.ensembling.choice`), what it predicts with and the post-processing in
    force (:meth:`hiennu.ensembling.candidate_postprocessing.PostprocessingOutcome.to_dict`); checkpoint is None for
    the rule, which has none."""

    name: str
    kind: str
    members: tuple[str, ...]
    folds: tuple[int, ...]
    checkpoint: str | None
    path: str
    postprocessing: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "members": list(self.members), "folds": list(self.folds),
                "checkpoint": self.checkpoint, "path": self.path, "postprocessing": self.postprocessing}

    @classmethod
    def from_dict(cls, d: dict) -> "ChosenConfiguration":
        return cls(d["name"], d["kind"], tuple(d["members"]), tuple(int(f) for f in d["folds"]), d["checkpoint"],
                   d["path"], d["postprocessing"])


@dataclass(frozen=True)
class InferenceInformation:
    """The content of ``inference_information.json`` (see the module docstring). selection: how the chosen one
    was chosen; paired_test: the chosen one + its nested post-processing against the rule + its own (None
    without the rule's scores, or in older files); nested_choice: the fully nested estimate of the choice (None
    unless ``--nested-choice``)."""

    dataset: str
    folds: tuple[int, ...]
    case_ids: tuple[str, ...]
    candidates: tuple[CandidateScores, ...]
    reference: CandidateScores | None
    chosen: ChosenConfiguration
    predict_command: str
    selection: Selection
    paired_test: PairedTest | None = None
    provenance: dict = field(default_factory=dict, compare=False)
    nested_choice: NestedChoice | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"dataset": self.dataset, "folds": list(self.folds), "case_ids": list(self.case_ids),
                          "metrics": METRICS_NOTE, "postprocessing_metrics": POSTPROCESSING_NOTE,
                          "candidates": [c.to_dict() for c in self.candidates],
                          "reference": None if self.reference is None else self.reference.to_dict(),
                          "selection": self.selection.to_dict(), "chosen": self.chosen.to_dict(),
                          "paired_test": None if self.paired_test is None else self.paired_test.to_dict(),
                          "predict_command": self.predict_command, "provenance": self.provenance,
                          "nested_choice": None if self.nested_choice is None else self.nested_choice.to_dict()})

    @classmethod
    def from_dict(cls, d: dict) -> "InferenceInformation":
        candidates = tuple(CandidateScores.from_dict(c) for c in d["candidates"])
        chosen = ChosenConfiguration.from_dict(d["chosen"])
        selection = (Selection.from_dict(d["selection"]) if d.get("selection") is not None
                     else Selection(RAW, len(candidates), None, chosen.name))  # older files: nnU-Net's rule
        return cls(d["dataset"], tuple(int(f) for f in d["folds"]), tuple(d["case_ids"]), candidates,
                   None if d.get("reference") is None else CandidateScores.from_dict(d["reference"]),
                   chosen, d["predict_command"], selection,
                   None if d.get("paired_test") is None else PairedTest.from_dict(d["paired_test"]),
                   d.get("provenance") or {},
                   None if d.get("nested_choice") is None else NestedChoice.from_dict(d["nested_choice"]))

    def save(self, dataset_results_dir: Path) -> Path:
        path = Path(dataset_results_dir) / INFERENCE_INFORMATION_FILE
        write_json(self.to_dict(), path)
        return path


def load_inference_information(dataset_results_dir: Path) -> InferenceInformation:
    """The ``inference_information.json`` of a dataset's results folder."""
    path = Path(dataset_results_dir) / INFERENCE_INFORMATION_FILE
    d = read_json_file(path, "write it with hiennu_find_best_configuration", "run hiennu_find_best_configuration again")
    try:
        return InferenceInformation.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise HiennuError(f"{path}: not an inference_information.json of hiennu_find_best_configuration ({e!r}); "
                          f"run hiennu_find_best_configuration again") from None


def predict_command(dataset: str, chosen: ChosenConfiguration, dataset_results_dir: Path) -> str:
    """The ``hiennu_predict`` line that predicts with the chosen configuration and its post-processing.

    One model: ``hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d DatasetNNN_Name -tr T -c C -p P -f FOLDS``
    (the folds always named, so that the command reproduces exactly the folds that were scored;
    ``-chk`` when the checkpoint is not the final one); an ensemble: ``hiennu_predict
    -i INPUT_FOLDER -o OUTPUT_FOLDER -m MODEL_A MODEL_B ...`` with the members' absolute folders (its folds and
    checkpoint are in its ``members.json``, its post-processing in its folder); the rule: ``-m`` its rule folder.
    """
    words = ["hiennu_predict", "-i", "INPUT_FOLDER", "-o", "OUTPUT_FOLDER"]
    if chosen.kind == RULE:
        return " ".join(words + ["-m", shlex.quote(str((Path(dataset_results_dir) / chosen.path).resolve()))])
    if chosen.kind == ENSEMBLE:
        words += ["-m", *(shlex.quote(str((Path(dataset_results_dir) / m).resolve())) for m in chosen.members)]
        return " ".join(words)
    parts = parse_model_dir_name(chosen.members[0])
    words += ["-d", dataset, "-tr", parts.trainer, "-c", parts.configuration, "-p", parts.plans]
    words += ["-f", *map(str, chosen.folds)]
    if chosen.checkpoint != FINAL:
        words += ["-chk", "best" if chosen.checkpoint == BEST else chosen.checkpoint]
    return " ".join(words)


def candidate_scores(name: str, kind: str, members: Sequence[str], path: str | None, metrics: dict[str, dict],
                     postprocessing: dict[str, Any] | None = None) -> CandidateScores:
    """A :class:`CandidateScores` with JSON-safe metrics (NaN as None), as it reads back from the file."""
    return CandidateScores(name, kind, tuple(members), path, json_safe(metrics), json_safe(postprocessing))

