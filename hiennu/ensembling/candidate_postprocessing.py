"""Every candidate's post-processing, chosen on its own cross-validation masks; and the rule's, as a reference.

nnU-Net chooses post-processing for the winner only. Here every candidate gets its own, because on BONBID
post-processing carries most of the score and how well it carries from fold to fold differs between
candidates (a candidate's nested estimate can lie 0.09 Dice under its pooled one), so the candidates are
compared as they would ship (:mod:`hiennu.ensembling.choice`).

The choice is :mod:`hiennu.postprocessing.selection`'s, the one ``hiennu_determine_postprocessing`` makes:
every post-processing candidate scored on the pooled CV masks, the best that beats none kept, and the nested
estimate (each fold's choice made on the other folds only) beside it. A model's masks are its folds'
validation masks (so the record is the one ``hiennu_determine_postprocessing`` writes); an ensemble's, its
CV masks (:mod:`hiennu.ensembling.ensemble_cv`); the rule ``ZADC < -2``'s, its own masks on the same folds
(:mod:`hiennu.postprocessing.rule_reference`), through the same code.

Where it goes: an ensemble's folder always takes the new record. A model folder takes it when it has no
``postprocessing.json`` yet; one already there is never replaced: when it records the same choice (the same
pooled post-processing and the same choice for every fold, parameters included; bookkeeping that later versions
added, such as ``num_candidates``, does not count) it stays as it is, and when it records another (chosen on
other masks, or edited) it is kept and the difference said, so the user decides (delete it and run again to
replace it). The rule's record is not written here: it is a
reference, unless ``--rule-candidate`` makes the rule a candidate and it is chosen; then
:mod:`hiennu.ensembling.best_configuration` writes it as a rule folder (:mod:`hiennu.postprocessing.rule_folder`). The scores reported are those of the record in force, case by case with the challenge metrics:
pooled (its choice on every case) and nested (each fold's own choice on the fold's cases); the nested rows
are kept for the paired test against the rule (:mod:`hiennu.ensembling.rule_comparison`). With ``--nested-choice``
a candidate's worker also computes what the fully nested choice needs of it
(:func:`hiennu.ensembling.nested_choice.choice_inputs`), on the cases it has read already.

:func:`candidate_postprocessing` does one candidate; it runs in worker processes (``-np``), one candidate each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hiennu.ensembling.cv_scores import TABLE_METRICS, summaries
from hiennu.ensembling.ensemble_cv import ENSEMBLE, MODEL, RULE
from hiennu.ensembling.nested_choice import ChoiceInputs, choice_inputs
from hiennu.errors import HiennuError
from hiennu.evaluation.metrics import case_metrics
from hiennu.io.atomic import read_json_file
from hiennu.log import get_logger
from hiennu.parallel import register_preload
from hiennu.postprocessing.candidates import ALL_CANDIDATES
from hiennu.postprocessing.record import PostProcessing, postprocessing_from_record
from hiennu.postprocessing.rule_reference import load_rule_cases
from hiennu.postprocessing.selection import (CaseImages, record_windows, select_on_cases, select_on_masks,
                                             select_postprocessing)

register_preload(__name__)

log = get_logger(__name__)

WRITTEN, IDENTICAL, KEPT = "written", "identical choice already there", "kept the existing record"
REFERENCE = "reference, not written"


@dataclass
class PostprocessingOutcome:
    """The post-processing in force for one candidate (or the rule).

    record: the record in force (the new one, or the one kept); path: its file (None for the rule); action:
    :data:`WRITTEN` (to write at the end of the run), :data:`IDENTICAL`, :data:`KEPT` or :data:`REFERENCE`;
    new_choice: the name of this run's choice (differs from the record's when an existing record was kept);
    pooled / nested: metric -> summary over the cases of the record in force (nested None when the record has
    no choice for some fold); nested_rows: the per-case rows behind ``nested`` (``case_id``, ``fold``, Dice, MASD,
    NSD), for the paired test; choice_inputs: what the fully nested choice needs of this candidate (None unless
    the job asked for it; for the rule only when it is a candidate, ``--rule-candidate``).
    """

    record: dict
    path: Path | None
    action: str
    new_choice: str
    pooled: dict[str, dict]
    nested: dict[str, dict] | None
    nested_rows: list[dict] | None = field(default=None, repr=False)
    choice_inputs: ChoiceInputs | None = field(default=None, repr=False)

    @property
    def to_write(self) -> dict | None:
        """The record to write at the end of the run, or None."""
        return self.record if self.action == WRITTEN else None

    def to_dict(self, relative_to: Path) -> dict[str, Any]:
        nested = self.record.get("nested") or {}
        return {"record": None if self.path is None else self.path.relative_to(relative_to).as_posix(),
                "chosen_name": self.record["chosen_name"], "action": self.action, "this_run_choice": self.new_choice,
                "nested_choices": nested.get("choices"), "pooled": self.pooled, "nested": self.nested}


@dataclass(frozen=True)
class PostprocessingJob:
    """One candidate whose post-processing is chosen in a worker.

    kind: :data:`MODEL` (``source`` is the model folder; its validation masks are found there), :data:`ENSEMBLE`
    (``masks``: its staged CV masks; ``source``: its ensemble folder) or :data:`RULE` (the rule's masks are made
    from the raw cases); fold_of: case -> the fold that held it out; record_path: where the record goes (None for
    the rule); size_rule: the components removed before any post-processing (the plans'); checkpoints: fold ->
    the checkpoint that predicted the masks (recorded in the record); nested_choice: the ``--select-by`` criterion
    when the fully nested choice is wanted (:mod:`hiennu.ensembling.nested_choice`), else None; candidate_set: what
    every post-processing choice is made among (:func:`hiennu.postprocessing.selection.all_candidates`);
    probabilities: for an ensemble whose choice asks the network (``judged-rule``), case -> its members' ``CASE.npz``
    files (their mean is the ensemble's probability map); None otherwise.
    """

    name: str
    kind: str
    fold_of: dict[str, int]
    raw_dir: Path
    source: Path
    record_path: Path | None
    masks: dict[str, Path] = field(default_factory=dict)
    size_rule: int = 0
    checkpoints: dict[str, str | None] = field(default_factory=dict)
    nested_choice: str | None = None
    candidate_set: str = ALL_CANDIDATES
    probabilities: dict[str, tuple[Path, ...]] | None = None


def candidate_postprocessing(job: PostprocessingJob) -> PostprocessingOutcome:
    """Choose ``job``'s post-processing on its CV masks, settle which record is in force and score it (nothing
    is written); with ``job.nested_choice``, also the candidate's :class:`ChoiceInputs`."""
    details: dict = {}
    fold_of = dict(job.fold_of)
    if job.kind in (MODEL, ENSEMBLE):
        if job.kind == MODEL:
            record = select_postprocessing(job.source, job.raw_dir, sorted(set(fold_of.values())), write=False,
                                           details=details, candidate_set=job.candidate_set,
                                           with_probabilities=_record_asks_network(job.record_path))
        else:
            record = select_on_masks(job.masks, fold_of, job.raw_dir, job.size_rule, job.checkpoints, job.source,
                                     details=details, candidate_set=job.candidate_set,
                                     probabilities=job.probabilities)
        outcome = settle_postprocessing(record, job.record_path, details["cases"], details["fold_of"],
                                        keep_existing=job.kind == MODEL)
        if job.nested_choice is not None:
            outcome.choice_inputs = _choice_inputs(record, outcome, details["cases"], details["fold_of"],
                                                   job.nested_choice, job.candidate_set)
        return outcome
    if job.kind == RULE:
        cases = load_rule_cases(job.raw_dir, sorted(fold_of), fold_of)
        record = select_on_cases(cases, fold_of, job.raw_dir, 0, {}, job.source, candidate_set=job.candidate_set)
        pooled, nested, nested_rows = _scores(record, cases, fold_of, job.name)
        outcome = PostprocessingOutcome(record, None, REFERENCE, record["chosen_name"], pooled, nested, nested_rows)
        if job.nested_choice is not None:  # the rule is a candidate (--rule-candidate)
            outcome.choice_inputs = _choice_inputs(record, outcome, cases, fold_of, job.nested_choice,
                                                   job.candidate_set)
        return outcome
    raise ValueError(f"unknown candidate kind {job.kind!r}")


def _record_asks_network(path: Path | None) -> bool:
    """Whether the record already at ``path`` (kept in force, :func:`settle_postprocessing`) has a lesion filter that
    asks the network, so the cases it is scored on need their probabilities whatever this run chooses among; a
    record that cannot be read answers False (:func:`settle_postprocessing` names it)."""
    if path is None or not path.is_file():
        return False
    try:
        return postprocessing_from_record(read_json_file(path, "", ""), str(path)).needs_probabilities
    except HiennuError:
        return False


def _choice_inputs(new: dict, outcome: PostprocessingOutcome, cases: Mapping[str, CaseImages],
                   fold_of: Mapping[str, int], criterion: str, candidate_set: str = ALL_CANDIDATES) -> ChoiceInputs:
    """The candidate's :class:`ChoiceInputs` from this run's record ``new``: its nested rows are the outcome's
    unless a different existing record was kept (then scored anew: the estimate is of this run's procedure)."""
    rows = outcome.nested_rows if outcome.action != KEPT else record_rows(new, cases, fold_of)[1]
    choices = {int(f): name for f, name in new["nested"]["choices"].items()}
    return choice_inputs(cases, fold_of, int(new["plans_min_component_voxels"]), criterion, rows, choices,
                         candidate_set)


def _choice(record: Mapping) -> Any:
    """What a record applies, as it reads back from JSON: the pooled choice and each fold's nested choice (not
    the evidence, the provenance or fields a later version added)."""
    plain = {"chosen": record.get("chosen"), "chosen_name": record.get("chosen_name"),
             "chosen_per_fold": (record.get("nested") or {}).get("chosen_per_fold")}
    return json.loads(json.dumps(plain, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def record_rows(record: dict, cases: Mapping[str, CaseImages],
                fold_of: Mapping[str, int]) -> tuple[list[dict], list[dict] | None]:
    """(pooled, nested) per-case rows (``case_id``, ``fold``, Dice, MASD, NSD) of a post-processing record on
    ``cases``: pooled applies its ``chosen`` to every case; nested applies each fold's ``nested.chosen_per_fold``
    to that fold's cases (None when the record has no choice for one of the folds)."""
    source = "postprocessing record"
    chosen = postprocessing_from_record(record, source)
    pooled = [_metrics(c, fold_of[c], cases[c], chosen) for c in sorted(cases)]
    per_fold = (record.get("nested") or {}).get("chosen_per_fold") or {}
    folds = set(fold_of[c] for c in cases)
    if not all(str(f) in per_fold for f in folds):
        return pooled, None
    fold_posts = {f: PostProcessing.from_dict(per_fold[str(f)], source) for f in folds}
    nested = [_metrics(c, fold_of[c], cases[c], fold_posts[fold_of[c]]) for c in sorted(cases)]
    return pooled, nested


def record_scores(record: dict, cases: Mapping[str, CaseImages],
                  fold_of: Mapping[str, int]) -> tuple[dict[str, dict], dict[str, dict] | None]:
    """(pooled, nested) metric summaries of :func:`record_rows`."""
    pooled, nested = record_rows(record, cases, fold_of)
    return summaries(pooled), None if nested is None else summaries(nested)


def _scores(record: dict, cases: Mapping[str, CaseImages], fold_of: Mapping[str, int],
            where: str) -> tuple[dict[str, dict], dict[str, dict] | None, list[dict] | None]:
    try:
        pooled, nested = record_rows(record, cases, fold_of)
    except HiennuError as e:
        raise HiennuError(f"{where}: {e}; delete it and run again to choose it anew") from None
    return summaries(pooled), None if nested is None else summaries(nested), nested


def _metrics(case_id: str, fold: int, case: CaseImages, post: PostProcessing) -> dict:
    m = case_metrics(case.ref, case.postprocessed(post), case.spacing_zyx)
    return {"case_id": case_id, "fold": int(fold), **{k: float(m[k]) for k in TABLE_METRICS}}


def settle_postprocessing(new: dict, path: Path, cases: Mapping[str, CaseImages], fold_of: Mapping[str, int],
                          keep_existing: bool) -> PostprocessingOutcome:
    """Decide which record is in force at ``path`` (see the module docstring) and score it.

    new: this run's record (:func:`~hiennu.postprocessing.selection.select_on_masks`); keep_existing: a model
    folder (an existing record is never replaced) rather than an ensemble folder (it always takes the new one).
    """
    record, action = new, WRITTEN
    if keep_existing and path.is_file():
        existing = read_json_file(path, "", "delete it and run again to choose it anew")
        try:  # a record we cannot apply is an error, not a keeper
            postprocessing_from_record(existing, str(path))
        except HiennuError as e:
            raise HiennuError(f"{e}; delete it and run again to choose it anew") from None
        if _choice(existing) == _choice(new):
            record, action = existing, IDENTICAL
        else:
            record, action = existing, KEPT
            if "validation_windows" in new and record_windows(existing) != record_windows(new):
                log.warning("%s was chosen on validation masks of other sliding windows (inference_window) than the "
                            "folds' validations now; it is kept, as an existing record always is: delete it (or "
                            "move it aside) and run again to choose it on the masks the model predicts now", path)
    pooled, nested, nested_rows = _scores(record, cases, fold_of, str(path))
    return PostprocessingOutcome(record, path, action, new["chosen_name"], pooled, nested, nested_rows)
