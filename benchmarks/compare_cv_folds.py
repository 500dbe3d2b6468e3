"""Two models' cross-validation folds, case by case, on the folds both have finished: means and paired tests.

A recipe stopped after some of its folds (results.md, recipes 9 and 11) can only be compared with another on
the validation cases of those folds. This reads each finished fold's native-geometry scores
(``fold_K/validation/summary_per_case.csv``, written by the trainer's final validation), keeps the folds
finished in both models, checks that they hold the same cases (the same split), and prints per fold and
over all those cases the mean Dice, MASD (mm, over the cases where both give a defined MASD, n beside it)
and NSD of each model, then the paired two-sided Wilcoxon signed-rank test of A minus B on Dice, MASD and
NSD, Holm-corrected across the three (:func:`hiennu.evaluation.report.paired_test_across_metrics`, the test
the study and ``postprocessing_cv.py`` use). No post-processing: these are the networks' own masks.

Why a script of its own: ``hiennu_find_best_configuration`` and the loss study need every fold of every
model; this is the honest reading of a partial recipe, on the cases its folds saw held out.

    python benchmarks/compare_cv_folds.py $hiennu_results/Dataset001_BONBID/TrainerDiceFocal__K3__3d_fullres \
        $hiennu_results/Dataset001_BONBID/TrainerDiceFocal__hiennuPlans__3d_fullres
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from hiennu.evaluation.paired_comparison import paired_markdown
from hiennu.evaluation.report import paired_test_across_metrics
from hiennu.training.fold_layout import finished_validations

METRICS = ("dice", "masd", "nsd")


def _defined(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def fold_means(rows_a: list[dict], rows_b: list[dict]) -> dict[str, tuple[float, float, int]]:
    """Per metric: (mean of A, mean of B, n) over the cases where both values are defined."""
    b_by_case = {r["case_id"]: r for r in rows_b}
    out = {}
    for metric in METRICS:
        pairs = [(r[metric], b_by_case[r["case_id"]][metric]) for r in rows_a
                 if _defined(r.get(metric)) and _defined(b_by_case[r["case_id"]].get(metric))]
        values = np.asarray(pairs, dtype=float).reshape(-1, 2)
        out[metric] = (float(values[:, 0].mean()) if len(values) else math.nan,
                       float(values[:, 1].mean()) if len(values) else math.nan, len(values))
    return out


def compare(model_a: Path, model_b: Path) -> str:
    """The Markdown report (see the module docstring); raises ``SystemExit`` when nothing can be compared."""
    a, b = finished_validations(model_a), finished_validations(model_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit(f"no fold is finished in both {model_a} (folds {sorted(a)}) and {model_b} (folds {sorted(b)})")
    for k in common:
        cases_a, cases_b = ({r["case_id"] for r in rows} for rows in (a[k], b[k]))
        if cases_a != cases_b:
            raise SystemExit(f"fold {k}: the two models validated different cases ({len(cases_a ^ cases_b)} differ): "
                             f"they were trained on different splits and cannot be compared case by case")
    name_a, name_b = model_a.name, model_b.name
    lines = [f"A = {name_a}, B = {name_b}: folds finished in both: {', '.join(map(str, common))} "
             f"(A has {sorted(a)}, B has {sorted(b)}); native geometry, no post-processing.", "",
             "| fold (cases) | A: Dice / MASD mm / NSD | B: Dice / MASD mm / NSD | MASD n |", "|---|---|---|---|"]

    def cells(means: dict) -> tuple[str, str, str]:
        return tuple(" / ".join(f"{means[m][i]:.3f}" if m != "masd" else f"{means[m][i]:.2f}" for m in METRICS)
                     for i in (0, 1)) + (str(means["masd"][2]),)

    for k in common:
        ca, cb, n = cells(fold_means(a[k], b[k]))
        lines.append(f"| {k} ({len(a[k])}) | {ca} | {cb} | {n} |")
    rows_a = [r for k in common for r in a[k]]
    rows_b = [r for k in common for r in b[k]]
    ca, cb, n = cells(fold_means(rows_a, rows_b))
    lines.append(f"| **all ({len(rows_a)})** | **{ca}** | **{cb}** | {n} |")
    tests = paired_test_across_metrics({name_a: rows_a, name_b: rows_b}, name_a, name_b, METRICS)
    lines += ["", "Paired two-sided Wilcoxon signed-rank test, A minus B, Holm across the three metrics:", "",
              paired_markdown(tests)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_a", type=Path, help="TRAINER__PLANS__CONFIG folder (fold_0 ... fold_4)")
    p.add_argument("model_b", type=Path, help="the model to compare with, trained on the same split")
    args = p.parse_args(argv)
    print(compare(args.model_a, args.model_b), end="")


if __name__ == "__main__":
    main()
