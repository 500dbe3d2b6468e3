"""Which candidate ships: by its nested Dice with post-processing (hiennu's default) or by raw Dice (nnU-Net's).

nnU-Net's ``nnUNetv2_find_best_configuration`` chooses the configuration by its raw mean CV Dice and only
then chooses post-processing for the winner. That is a fine rule when post-processing adds little. On BONBID
it carries most of the score (the rule ``ZADC < -2`` goes from 0.47 to 0.63-0.70 Dice with it, nested, by the
candidates it is chosen among; results.md), and how well a
candidate's post-processing carries from fold to fold differs between candidates: the 2d + 3d_fullres
ensemble scored 0.502 raw against 0.499 for 3d_fullres alone, so nnU-Net's rule ships it, but with
post-processing its nested estimate is 0.508 (pooled 0.597, 0.09 above) against 0.606 for 3d_fullres (pooled
0.648). So every candidate gets its own post-processing chosen on its own CV masks
(:mod:`hiennu.ensembling.candidate_postprocessing`) and the choice is made on what would ship: the **nested
Dice with post-processing** (each fold's post-processing chosen on the other folds only, the honest estimate;
the pooled one is chosen and scored on the same cases and flatters unstable choices most). Ties: the raw
Dice, then fewer members, then the name.

Choosing the best of K candidates on the same cases flatters the winner's nested estimate a little (the
choice among candidates is not itself nested); K is recorded and printed beside it, and ``--nested-choice``
estimates the whole choice fully nested (:mod:`hiennu.ensembling.nested_choice`).

``--select-by raw`` is nnU-Net's rule: the raw mean Dice, ties to fewer members, then the name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from hiennu.errors import HiennuError

if TYPE_CHECKING:
    from hiennu.ensembling.inference_information import CandidateScores

POSTPROCESSED, RAW = "postprocessed", "raw"
SELECT_BY = (POSTPROCESSED, RAW)
RULES = {POSTPROCESSED: "the highest nested mean Dice with the candidate's own post-processing (each fold's "
                        "choice made on the other folds only); ties: raw Dice, fewer members, then the name",
         RAW: "the highest raw mean Dice, without post-processing (nnU-Net's rule); ties: fewer members, then the "
              "name"}
FLATTERY_NOTE = ("the best of {k} candidates chosen on the same cases: its estimate is flattered a little by that "
                 "choice (not itself nested; --nested-choice estimates the choice fully nested)")


def _number(value: float | None) -> float:
    """A score for ordering: missing or NaN ranks below every number."""
    return -math.inf if value is None or math.isnan(value) else float(value)


def selection_key(candidate: "CandidateScores", select_by: str) -> tuple:
    """The sort key of ``candidate`` (smallest first is best) under ``select_by``."""
    raw = _number(candidate.mean("dice"))
    if select_by == RAW:
        return (-raw, len(candidate.members), candidate.name)
    if select_by == POSTPROCESSED:
        return (-_number(candidate.nested_mean("dice")), -raw, len(candidate.members), candidate.name)
    raise HiennuError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {select_by!r}")


def choose_best(scored: Sequence["CandidateScores"], select_by: str = POSTPROCESSED) -> "CandidateScores":
    """The best candidate under ``select_by`` (see the module docstring). With :data:`POSTPROCESSED`, a candidate
    without a nested estimate with post-processing ranks below every one that has it."""
    if not scored:
        raise HiennuError("no candidate to choose from")
    return min(scored, key=lambda c: selection_key(c, select_by))


@dataclass(frozen=True)
class Selection:
    """How the chosen candidate was chosen: the criterion (:data:`POSTPROCESSED` or :data:`RAW`), among how many
    candidates, and what each criterion picks (so a run shows when nnU-Net's rule would have shipped another);
    by_postprocessed is None in files written before candidates had post-processing."""

    criterion: str
    num_candidates: int
    by_postprocessed: str | None
    by_raw: str

    @property
    def rule(self) -> str:
        return RULES[self.criterion]

    @property
    def note(self) -> str:
        return FLATTERY_NOTE.format(k=self.num_candidates)

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "rule": self.rule, "num_candidates": self.num_candidates,
                "by_postprocessed": self.by_postprocessed, "by_raw": self.by_raw, "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> "Selection":
        if d["criterion"] not in SELECT_BY:
            raise ValueError(f"selection criterion {d['criterion']!r} is not one of {SELECT_BY}")
        return cls(d["criterion"], int(d["num_candidates"]), d.get("by_postprocessed"), d["by_raw"])


def select(scored: Sequence["CandidateScores"], select_by: str) -> tuple["CandidateScores", Selection]:
    """The chosen candidate under ``select_by`` and the :class:`Selection` that records it."""
    best = choose_best(scored, select_by)
    return best, Selection(select_by, len(scored), choose_best(scored, POSTPROCESSED).name,
                           choose_best(scored, RAW).name)
