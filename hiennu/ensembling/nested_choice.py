"""The fully nested estimate of the choice ``hiennu_find_best_configuration`` makes (``--nested-choice``).

Why it exists: the command gives every candidate its post-processing by nested cross-validation, then ships the
candidate with the best nested Dice with post-processing (or the best raw Dice, ``--select-by raw``) over all the
CV cases. The winner's number is then the best of K on the very cases it is reported on: the choice among the
candidates is not itself nested, and flatters it (:data:`hiennu.ensembling.choice.FLATTERY_NOTE`). Here no choice
is made on the cases it is scored on. For each outer fold k the whole selection runs on the other folds only:

1. every candidate is scored as the command would score it if it had been given those folds alone: the raw Dice of
   their cases and, with ``--select-by postprocessed``, the nested Dice with post-processing within them (inner
   fold j: post-processing chosen on the folds other than j and k, applied to j), the same selection code
   restricted to a subset of the folds (:func:`hiennu.postprocessing.selection.nested_estimate` with ``within``);
2. one candidate is chosen by the command's own rule (:func:`hiennu.ensembling.choice.choose_best`: the same
   criterion, the same ties);
3. the chosen candidate, with its post-processing chosen on all the folds but k (its nested choice for fold k, as
   the selection makes it), is applied to fold k's cases.

The K outer folds' cases are pooled and summarized as every other row (Dice with a bootstrap 95 % interval, MASD
over the cases where it is defined with n, NSD), and tested, paired, against the rule + its nested post-processing
(:mod:`hiennu.ensembling.rule_comparison`): the honest estimate of what the command's choice scores on cases it
never saw. Fold k's cases reach neither the candidate chosen for them nor its post-processing. The same choices'
Dice without post-processing is pooled beside it (``raw_metrics``): with ``--select-by raw`` that is the number the
choice is made for (a network-alone goal), and the chosen candidate's raw Dice on all cases is the best of K.

What is estimated is the procedure, this run's choices: a model's existing ``postprocessing.json`` that records
another choice is kept by the command (:mod:`hiennu.ensembling.candidate_postprocessing`), but it was not made by
this procedure and has no inner folds, so the estimate uses the choice this run would make instead.

Cost: per candidate, K (K - 1) / 2 more post-processing choices (10 for 5 folds; the choice on the folds other
than j and k serves both (k, j) and (j, k)), each on the cases of K - 2 folds, made in the worker that already
holds the candidate's cases (:func:`choice_inputs`); the choice itself (:func:`nested_choice`) is bookkeeping.
It needs three folds or more: with two, the inner choice would have no fold left to be chosen on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from hiennu.ensembling.choice import POSTPROCESSED, SELECT_BY, choose_best
from hiennu.ensembling.cv_scores import summaries
from hiennu.ensembling.rule_comparison import NESTED, PairedTest, paired_rows_test
from hiennu.errors import HiennuError
from hiennu.evaluation.evaluate import json_safe, summarize
from hiennu.masks import dice
from hiennu.postprocessing.candidates import ALL_CANDIDATES
from hiennu.postprocessing.selection import CaseImages, nested_estimate

if TYPE_CHECKING:
    from hiennu.ensembling.inference_information import CandidateScores

MIN_FOLDS = 3
METHOD = "fully nested choice (candidate + post-processing chosen without the fold)"
HOW = ("for each outer fold k: every candidate scored on the other folds only (raw Dice; with post-processing, its "
       "nested Dice within them: inner fold j's post-processing chosen on the folds other than j and k), the "
       "candidate chosen there by the command's criterion, then applied with its post-processing chosen on all folds "
       "but k to fold k's cases; the outer folds' cases pooled. No choice is made on the cases it is scored on")


def check_folds(folds: Sequence[int]) -> None:
    """A fully nested choice needs :data:`MIN_FOLDS` folds: one held out, one to choose the inner post-processing
    on and one to score it on. Raises :class:`HiennuError` (one line, the folds and the fix) otherwise."""
    if len(set(folds)) < MIN_FOLDS:
        raise HiennuError(f"--nested-choice needs at least {MIN_FOLDS} folds (one held out, post-processing chosen "
                          f"on a second and scored on a third), got fold(s) {', '.join(map(str, sorted(set(folds))))}; "
                          f"name three or more with -f (e.g. -f 0 1 2 3 4), or leave out --nested-choice")


@dataclass(frozen=True)
class WithoutFold:
    """What the selection sees of one candidate when one outer fold is held out: the other folds' cases, each with
    its raw Dice and its Dice with post-processing chosen by nested CV within those folds (None when the criterion
    does not need it: ``--select-by raw``)."""

    raw_dice: dict[str, float]
    nested_dice: dict[str, float] | None


@dataclass(frozen=True)
class ChoiceInputs:
    """One candidate as the fully nested choice needs it, computed where its cases are read (its post-processing
    worker). without_fold: outer fold -> :class:`WithoutFold`; held_out_rows: per-case rows (``case_id``, ``fold``,
    Dice, MASD, NSD) of this run's nested post-processing, each fold's choice made on the other folds, what the
    candidate scores on fold k when it is chosen without k; held_out_postprocessing: fold -> the name of that
    choice."""

    without_fold: dict[int, WithoutFold]
    held_out_rows: list[dict]
    held_out_postprocessing: dict[int, str]


def choice_inputs(cases: Mapping[str, CaseImages], fold_of: Mapping[str, int], size_rule: int, criterion: str,
                  held_out_rows: Sequence[dict], held_out_postprocessing: Mapping[int, str],
                  candidate_set: str = ALL_CANDIDATES) -> ChoiceInputs:
    """:class:`ChoiceInputs` of one candidate: ``cases`` its CV masks
    (:func:`hiennu.postprocessing.selection.load_cases`), ``size_rule`` the plans' components removed before any
    post-processing (as its own selection got it), and ``held_out_rows`` / ``held_out_postprocessing`` its nested
    post-processing of this run; ``candidate_set`` what each inner post-processing choice is made among."""
    if criterion not in SELECT_BY:
        raise HiennuError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {criterion!r}")
    cases, fold_of = dict(cases), dict(fold_of)
    folds = sorted(set(fold_of[c] for c in cases))
    check_folds(folds)
    raw = {c: dice(cases[c].ref, cases[c].pred) for c in sorted(cases)}
    made: dict = {}  # each inner choice (on the folds other than j and k) is made once, for (k, j) and (j, k)
    without: dict[int, WithoutFold] = {}
    for k in folds:
        others = [f for f in folds if f != k]
        nested = None
        if criterion == POSTPROCESSED:
            nested, _ = nested_estimate(cases, fold_of, min_component_voxels=size_rule, within=others, made=made,
                                        candidate_set=candidate_set)
        without[k] = WithoutFold({c: raw[c] for c in raw if fold_of[c] != k}, nested)
    return ChoiceInputs(without, [dict(r) for r in held_out_rows], {int(f): str(n) for f, n in
                                                                    held_out_postprocessing.items()})


def _without(candidate: "CandidateScores", seen: WithoutFold) -> "CandidateScores":
    """``candidate`` as the command would score it given only the folds of ``seen``: the same name, kind and
    members (the ties), its raw Dice and nested Dice with post-processing over those folds' cases."""
    nested = None if seen.nested_dice is None else {"nested": {"dice": summarize(seen.nested_dice.values())}}
    return dataclasses.replace(candidate, metrics={"dice": summarize(seen.raw_dice.values())}, postprocessing=nested)


@dataclass(frozen=True)
class NestedChoice:
    """The fully nested estimate, as ``inference_information.json`` holds it (JSON-safe: NaN as None).

    criterion: ``--select-by``; num_candidates: K, the candidates each outer fold chose among; per_fold: per outer
    fold, ``fold``, ``chosen`` (the candidate chosen on the other folds), ``raw_dice`` and ``nested_dice`` (its
    scores there, the criterion; ``nested_dice`` None with ``--select-by raw``), ``postprocessing`` (its
    post-processing chosen on the other folds), ``num_cases`` and ``dice`` (mean Dice on the fold),
    ``runner_up`` (the one the criterion ranks next there; None with one candidate) and ``scores`` (every
    candidate's ``raw_dice`` and ``nested_dice`` there, so how close the choice was shows) and
    ``raw_dice_on_fold`` (the chosen candidate's mean Dice on the fold without post-processing); metrics:
    metric -> summary over the pooled outer cases; per_case: ``case_id``, ``fold``, ``candidate``, Dice, MASD, NSD
    and ``raw_dice`` (the chosen candidate's Dice on the case without post-processing); paired_test: against the
    rule + its nested post-processing (None without the rule); raw_metrics: ``{"dice": summary}`` of the chosen
    candidates' Dice without post-processing over the pooled outer cases, what ``--select-by raw`` is after
    (None in files written before it was recorded)."""

    criterion: str
    num_candidates: int
    per_fold: tuple[dict, ...]
    metrics: dict[str, dict]
    per_case: tuple[dict, ...]
    paired_test: PairedTest | None = None
    raw_metrics: dict[str, dict] | None = None

    @property
    def choices(self) -> dict[int, str]:
        """Outer fold -> the candidate chosen without it."""
        return {int(f["fold"]): f["chosen"] for f in self.per_fold}

    def to_dict(self) -> dict[str, Any]:
        return {"method": METHOD, "how": HOW, "criterion": self.criterion, "num_candidates": self.num_candidates,
                "per_fold": list(self.per_fold), "metrics": self.metrics, "per_case": list(self.per_case),
                "paired_test": None if self.paired_test is None else self.paired_test.to_dict(),
                "raw_metrics": self.raw_metrics}

    @classmethod
    def from_dict(cls, d: dict) -> "NestedChoice":
        if d["criterion"] not in SELECT_BY:
            raise ValueError(f"nested choice criterion {d['criterion']!r} is not one of {SELECT_BY}")
        return cls(d["criterion"], int(d["num_candidates"]), tuple(d["per_fold"]), d["metrics"], tuple(d["per_case"]),
                   None if d.get("paired_test") is None else PairedTest.from_dict(d["paired_test"]),
                   d.get("raw_metrics"))


def nested_choice(scored: Sequence["CandidateScores"], inputs: Mapping[str, ChoiceInputs], criterion: str,
                  reference_name: str | None = None, reference_rows: Sequence[dict] | None = None) -> NestedChoice:
    """The fully nested estimate (see the module docstring) of choosing among ``scored`` by ``criterion``.

    inputs: candidate name -> its :class:`ChoiceInputs` (every candidate of ``scored``, the same folds);
    reference_name / reference_rows: the rule and its nested post-processed rows, for the paired test (none
    without them)."""
    if not scored:
        raise HiennuError("no candidate to choose from")
    missing = [s.name for s in scored if s.name not in inputs]
    if missing:
        raise ValueError(f"nested choice: no inputs for candidate(s) {missing}")
    folds = sorted(inputs[scored[0].name].without_fold)
    check_folds(folds)
    per_fold, per_case = [], []
    for k in folds:
        seen = [_without(s, inputs[s.name].without_fold[k]) for s in scored]
        best = choose_best(seen, criterion)
        rest = [s for s in seen if s.name != best.name]
        runner_up = choose_best(rest, criterion).name if rest else None
        chosen = inputs[best.name]
        rows = [{"case_id": r["case_id"], "fold": int(r["fold"]), "candidate": best.name,
                 **{m: r[m] for m in ("dice", "masd", "nsd")}, "raw_dice": _raw_dice(chosen, r["case_id"], k)}
                for r in chosen.held_out_rows if int(r["fold"]) == k]
        if not rows:
            raise ValueError(f"nested choice: {best.name} has no held-out rows for fold {k}")
        per_fold.append({"fold": k, "chosen": best.name, "raw_dice": best.mean("dice"),
                         "raw_dice_on_fold": summarize(r["raw_dice"] for r in rows)["mean"],
                         "nested_dice": best.nested_mean("dice"), "postprocessing": chosen.held_out_postprocessing[k],
                         "num_cases": len(rows), "dice": summarize(r["dice"] for r in rows)["mean"],
                         "runner_up": runner_up, "scores": {s.name: {"raw_dice": s.mean("dice"),
                                                                     "nested_dice": s.nested_mean("dice")}
                                                            for s in seen}})
        per_case += rows
    per_case.sort(key=lambda r: r["case_id"])  # the order of every other row: the same cases bootstrap alike
    test = None
    if reference_name is not None and reference_rows is not None:
        test = paired_rows_test(METHOD, per_case, f"{reference_name}{NESTED}", reference_rows)
    return NestedChoice(criterion, len(scored), tuple(json_safe(per_fold)), json_safe(summaries(per_case)),
                        tuple(json_safe(per_case)), test,
                        json_safe({"dice": summarize(r["raw_dice"] for r in per_case)}))


def _raw_dice(inputs: ChoiceInputs, case_id: str, fold: int) -> float:
    """A held-out case's raw Dice: every selection without another fold saw it (there are at least two others)."""
    for k, seen in inputs.without_fold.items():
        if k != fold and case_id in seen.raw_dice:
            return seen.raw_dice[case_id]
    raise ValueError(f"nested choice: no raw Dice of case {case_id} (fold {fold})")
