"""The chosen candidate + its nested post-processing against the rule + its nested post-processing, paired.

The raw rows compare a network with a bare threshold; the question that matters is whether the network beats
the rule when both get the same treatment. Both sides here carry the post-processing chosen by nested
cross-validation on their own CV masks (:mod:`hiennu.ensembling.candidate_postprocessing`; the rule's masks on
the same folds of ``splits_final.json``), over the same cases, and the test is the one the loss study and
``benchmarks/postprocessing_cv.py`` use (:mod:`hiennu.evaluation.paired_comparison`): the two-sided Wilcoxon
signed-rank test on Dice, MASD and NSD, Holm-corrected across the three, with n (pairs) per metric (MASD pairs
only the cases where both define it) and the mean of the differences (the chosen one minus the rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from hiennu.evaluation.evaluate import json_safe
from hiennu.evaluation.paired_comparison import PAIRED_METRICS, PAIRED_NOTE, paired_against_rule

if TYPE_CHECKING:  # a type only: candidate_postprocessing imports nested_choice, which imports this module
    from hiennu.ensembling.candidate_postprocessing import PostprocessingOutcome

NESTED = " + post-processing (nested)"


@dataclass(frozen=True)
class PairedTest:
    """The paired test's rows (:func:`hiennu.evaluation.paired_comparison.paired_against_rule`, JSON-safe: NaN as
    None): method and reference as named in the rows, the number of cases each side was scored on."""

    method: str
    reference: str
    num_cases: int
    rows: tuple[dict, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "reference": self.reference, "num_cases": self.num_cases,
                "metrics": list(PAIRED_METRICS), "note": PAIRED_NOTE, "rows": list(self.rows)}

    @classmethod
    def from_dict(cls, d: dict) -> "PairedTest":
        return cls(d["method"], d["reference"], int(d["num_cases"]), tuple(d["rows"]))


def paired_test(chosen_name: str, chosen: PostprocessingOutcome, rule_name: str,
                rule: PostprocessingOutcome) -> PairedTest | None:
    """The test of ``chosen`` against ``rule`` over their nested rows; None when either has no nested estimate
    (a kept record without a choice per fold)."""
    if chosen.nested_rows is None or rule.nested_rows is None:
        return None
    return paired_rows_test(f"{chosen_name}{NESTED}", chosen.nested_rows, f"{rule_name}{NESTED}", rule.nested_rows)


def paired_rows_test(method: str, rows: Sequence[dict], reference: str,
                     reference_rows: Sequence[dict]) -> PairedTest:
    """The test of per-case ``rows`` (``case_id``, Dice, MASD, NSD) named ``method`` against ``reference_rows``,
    paired by case: the test of :func:`paired_test`, for rows that are not one candidate's (the fully nested
    choice of :mod:`hiennu.ensembling.nested_choice`, a candidate per fold)."""
    tests = paired_against_rule({method: list(rows), reference: list(reference_rows)}, reference)
    return PairedTest(method, reference, len(rows), tuple(json_safe(tests)))
