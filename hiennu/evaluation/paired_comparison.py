"""Something + post-processing against the rule + post-processing, case by case: the paired test and its table.

"Above the rule" compares two pipelines after the same treatment (:mod:`hiennu.postprocessing.rule_reference`),
over the same cases, so the test is paired: the two-sided Wilcoxon signed-rank test on Dice, MASD and NSD,
Holm-corrected across the three (:func:`hiennu.evaluation.report.paired_test_across_metrics`: one family per
method, "is it different on any of them"). Pairs are the cases both scored with a defined value: every case for
Dice and NSD; for MASD only the cases where both have it defined (it is undefined when exactly one of mask and
reference is empty), so its n can be smaller.

Shared by the loss study's report and ``benchmarks/postprocessing_cv.py``
(:mod:`hiennu.study.postprocessed_comparison`) and by ``hiennu_find_best_configuration``
(:mod:`hiennu.ensembling`), which may not import the study.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from hiennu.evaluation import report

PAIRED_METRICS = ("dice", "masd", "nsd")
PAIRED_NOTE = ("Paired two-sided Wilcoxon signed-rank test of each model + post-processing against the rule + "
               "post-processing over the same cases (difference: model minus rule; for MASD lower is better), "
               "p (Holm): Holm's step-down correction across the three metrics of one model. Pairs: every case "
               "for Dice and NSD; MASD pairs only the cases where both masks give a defined MASD (it is undefined "
               "when exactly one of mask and reference is empty), hence its smaller n.")


def paired_against_rule(per_case: Mapping[str, Sequence[dict]], rule: str,
                        metrics: Sequence[str] = PAIRED_METRICS) -> list[dict]:
    """:func:`report.paired_test_across_metrics` of every method of ``per_case`` but ``rule`` against ``rule``
    (each method its own Holm family over ``metrics``). Rows: ``method``, ``reference``, ``metric``, ``n_pairs``,
    ``mean_difference`` (method minus rule, the difference of the means over the pairs), ``median_difference``,
    ``statistic``, ``p_value``, ``p_holm``."""
    rows: list[dict] = []
    for method in per_case:
        if method != rule:
            rows += report.paired_test_across_metrics(per_case, method, rule, metrics)
    return rows


def _p(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4g}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.4f}"


def _statistic(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1f}"


def paired_markdown(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`paired_against_rule` rows: n (pairs) beside every test. Missing numbers (None,
    as they read back from JSON, or NaN) are shown as n/a."""
    header = ["method", "vs", "metric", "n (pairs)", "mean diff", "median diff", "W", "p", "p (Holm, across metrics)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], r["reference"], report.METRIC_LABELS.get(r["metric"], r["metric"]), str(r["n_pairs"]),
            _signed(r["mean_difference"]), _signed(r["median_difference"]), _statistic(r["statistic"]),
            _p(r["p_value"]), _p(r.get("p_holm"))]) + " |")
    return "\n".join(lines) + "\n"
