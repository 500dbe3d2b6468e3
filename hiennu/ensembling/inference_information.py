"""``inference_information.json``: what ``hiennu_find_best_configuration`` scored, what it chose, and how to
predict with it; the table it prints.

The file lies in the dataset's results folder (:data:`hiennu.paths.INFERENCE_INFORMATION_FILE`)::

    {"dataset": "Dataset001_BONBID", "folds": [0, 1, 2, 3, 4], "case_ids": [...],
     "metrics": "per case on the native grid: Dice, MASD (mm, cases where defined), NSD (2 mm); ...",
     "candidates": [{"name": "TrainerDiceFocal__hiennuPlans__2d", "kind": "model", "members": [...],
                     "path": "TrainerDiceFocal__hiennuPlans__2d",
                     "metrics": {"dice": {"mean": ..., "ci95_low": ..., "ci95_high": ..., "n": ...},
                                 "masd": ..., "nsd": ...}},
                    {"name": "ensemble___A___B", "kind": "ensemble", "path": "ensembles/ensemble___A___B", ...}],
     "reference": {"name": "rule: ZADC < -2", "kind": "rule", ...},      # scored on the same cases, never chosen
     "chosen": {"name": ..., "kind": "model" | "ensemble", "members": [...], "folds": [...],
                "checkpoint": "checkpoint_final.pth", "path": ...,
                "postprocessing": {"record": "<path relative to the dataset results folder>", "chosen_name": ...,
                                   "action": ..., "this_run_choice": ..., "pooled": {...}, "nested": {...}}},
     "predict_command": "hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER ...", "provenance": {...}}

Non-finite numbers are written as null.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hiennu.ensembling.cv_scores import TABLE_METRICS, json_safe
from hiennu.ensembling.ensemble_cv import ENSEMBLE
from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file, write_json
from hiennu.io.checkpoint import BEST, FINAL
from hiennu.paths import INFERENCE_INFORMATION_FILE, parse_model_dir_name

RULE = "rule"
DEFAULT_PREDICT_FOLDS = (0, 1, 2, 3, 4)  # what hiennu_predict uses without -f (every trained fold)
METRICS_NOTE = ("per case on the native grid: Dice, MASD (mm; mean over the cases where it is defined, n), NSD "
                "(surface Dice at 2 mm); mean over the pooled cross-validation cases with a seeded 95 % bootstrap "
                "interval of the mean; every candidate's mask is its probabilities (an ensemble's: the members' "
                "mean) >= 0.5 less the plans' small components, without post-processing")


@dataclass(frozen=True)
class CandidateScores:
    """One scored row: a model, an ensemble or the reference rule. path: its folder relative to the dataset's
    results folder (None for the rule); metrics: metric -> summary (mean, ci95_low, ci95_high, n ...)."""

    name: str
    kind: str
    members: tuple[str, ...]
    path: str | None
    metrics: dict[str, dict]

    def mean(self, metric: str = "dice") -> float:
        value = self.metrics[metric]["mean"]
        return math.nan if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "members": list(self.members), "path": self.path,
                "metrics": self.metrics}

    @classmethod
    def from_dict(cls, d: dict) -> "CandidateScores":
        return cls(d["name"], d["kind"], tuple(d["members"]), d["path"], d["metrics"])


@dataclass(frozen=True)
class ChosenConfiguration:
    """The candidate chosen by mean Dice, what it predicts with and the post-processing in force
    (:meth:`hiennu.ensembling.chosen_postprocessing.PostprocessingOutcome.to_dict`)."""

    name: str
    kind: str
    members: tuple[str, ...]
    folds: tuple[int, ...]
    checkpoint: str
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
    """The content of ``inference_information.json`` (see the module docstring)."""

    dataset: str
    folds: tuple[int, ...]
    case_ids: tuple[str, ...]
    candidates: tuple[CandidateScores, ...]
    reference: CandidateScores | None
    chosen: ChosenConfiguration
    predict_command: str
    provenance: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"dataset": self.dataset, "folds": list(self.folds), "case_ids": list(self.case_ids),
                          "metrics": METRICS_NOTE, "candidates": [c.to_dict() for c in self.candidates],
                          "reference": None if self.reference is None else self.reference.to_dict(),
                          "chosen": self.chosen.to_dict(), "predict_command": self.predict_command,
                          "provenance": self.provenance})

    @classmethod
    def from_dict(cls, d: dict) -> "InferenceInformation":
        return cls(d["dataset"], tuple(int(f) for f in d["folds"]), tuple(d["case_ids"]),
                   tuple(CandidateScores.from_dict(c) for c in d["candidates"]),
                   None if d.get("reference") is None else CandidateScores.from_dict(d["reference"]),
                   ChosenConfiguration.from_dict(d["chosen"]), d["predict_command"], d.get("provenance") or {})

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

    One model: ``hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d DatasetNNN_Name -tr T -c C -p P`` (with ``-f``
    when the folds are not 0-4, ``-chk`` when the checkpoint is not the final one); an ensemble: ``hiennu_predict
    -i INPUT_FOLDER -o OUTPUT_FOLDER -m MODEL_A MODEL_B ...`` with the members' absolute folders (its folds and
    checkpoint are in its ``members.json``, its post-processing in its folder).
    """
    words = ["hiennu_predict", "-i", "INPUT_FOLDER", "-o", "OUTPUT_FOLDER"]
    if chosen.kind == ENSEMBLE:
        words += ["-m", *(shlex.quote(str((Path(dataset_results_dir) / m).resolve())) for m in chosen.members)]
        return " ".join(words)
    parts = parse_model_dir_name(chosen.members[0])
    words += ["-d", dataset, "-tr", parts.trainer, "-c", parts.configuration, "-p", parts.plans]
    if tuple(chosen.folds) != DEFAULT_PREDICT_FOLDS:
        words += ["-f", *map(str, chosen.folds)]
    if chosen.checkpoint != FINAL:
        words += ["-chk", "best" if chosen.checkpoint == BEST else chosen.checkpoint]
    return " ".join(words)


def _cells(metrics: dict[str, dict] | None) -> list[str]:
    if metrics is None:
        return ["", "", ""]

    def number(summary: dict, key: str, digits: int) -> str:
        value = summary.get(key)
        return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    dice, masd, nsd = (metrics[m] for m in TABLE_METRICS)
    return [f"{number(dice, 'mean', 4)} [{number(dice, 'ci95_low', 4)}, {number(dice, 'ci95_high', 4)}]",
            f"{number(masd, 'mean', 2)} ({masd.get('n', 0)})", number(nsd, "mean", 4)]


def table(info: InferenceInformation) -> str:
    """Markdown: every candidate and the reference rule (Dice with its 95 % interval, MASD with its number of
    defined cases, NSD), then the chosen one with its post-processing, pooled and nested, and the command."""
    header = ["candidate", "kind", "Dice [95% CI]", "MASD mm (n)", "NSD"]
    lines = [f"Configurations of {info.dataset} scored on {len(info.case_ids)} cross-validation cases (folds "
             f"{', '.join(map(str, info.folds))}), without post-processing:", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for c in info.candidates:
        name = f"**{c.name}** (chosen)" if c.name == info.chosen.name else c.name
        lines.append("| " + " | ".join([name, c.kind] + _cells(c.metrics)) + " |")
    if info.reference is not None:
        lines.append("| " + " | ".join([f"{info.reference.name} (reference, not chosen)", RULE]
                                       + _cells(info.reference.metrics)) + " |")
    post = info.chosen.postprocessing
    for how in ("pooled", "nested"):
        lines.append("| " + " | ".join([f"{info.chosen.name} + {post['chosen_name']}, {how}", info.chosen.kind]
                                       + _cells(post[how])) + " |")
    lines += ["", f"chosen: {info.chosen.name} ({info.chosen.kind}; best mean Dice; ties: fewer members, then name)",
              f"post-processing: {post['chosen_name']} ({post['record']}: {post['action']})"
              + ("" if post["this_run_choice"] == post["chosen_name"] else
                 f"; this run would choose {post['this_run_choice']}: delete the file and run again to replace it"),
              "pooled: chosen and scored on every case (flatters it); nested: each fold's choice made on the other "
              "folds only (the honest estimate)",
              "", "predict with:", f"  {info.predict_command}"]
    return "\n".join(lines) + "\n"


def candidate_scores(name: str, kind: str, members: Sequence[str], path: str | None,
                     metrics: dict[str, dict]) -> CandidateScores:
    """A :class:`CandidateScores` with JSON-safe metrics (NaN as None), as it reads back from the file."""
    return CandidateScores(name, kind, tuple(members), path, json_safe(metrics))

