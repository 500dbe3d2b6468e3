"""benchmarks/compare_cv_folds.py: two models' finished folds, case by case (hand-computed means)."""

from __future__ import annotations

import math

import pytest

from hiennu.evaluation.evaluate import write_per_case_csv
from helpers import load_benchmark


def _fold(model, k, rows):
    folder = model / f"fold_{k}" / "validation"
    folder.mkdir(parents=True)
    write_per_case_csv([{"case_id": c, "dice": d, "masd": m, "nsd": n} for c, d, m, n in rows],
                       folder / "summary_per_case.csv")


def test_means_over_the_common_folds_and_masd_over_the_cases_both_define(tmp_path):
    bench = load_benchmark("compare_cv_folds")
    a, b = tmp_path / "A", tmp_path / "B"
    _fold(a, 0, [("x", 0.4, 2.0, 0.5), ("y", 0.6, math.nan, 0.7)])
    _fold(b, 0, [("x", 0.5, 1.0, 0.6), ("y", 0.8, 3.0, 0.9)])
    _fold(b, 1, [("z", 0.9, 1.0, 0.9)])             # B's fold 1 has no partner in A: left out
    text = bench.compare(a, b)
    assert "folds finished in both: 0 (A has [0], B has [0, 1])" in text
    # Dice (0.4 + 0.6) / 2 vs (0.5 + 0.8) / 2; MASD only case x (y undefined in A): 2.0 vs 1.0, n 1
    assert "| 0 (2) | 0.500 / 2.00 / 0.600 | 0.650 / 1.00 / 0.750 | 1 |" in text
    assert "| **all (2)** | **0.500 / 2.00 / 0.600** | **0.650 / 1.00 / 0.750** | 1 |" in text
    assert "| A | B | Dice | 2 | -0.1500 |" in text


def test_different_splits_or_no_common_fold_are_refused(tmp_path):
    bench = load_benchmark("compare_cv_folds")
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    _fold(a, 0, [("x", 0.4, 2.0, 0.5)])
    _fold(b, 0, [("w", 0.5, 1.0, 0.6)])
    _fold(c, 1, [("x", 0.5, 1.0, 0.6)])
    with pytest.raises(SystemExit, match="fold 0: the two models validated different cases"):
        bench.compare(a, b)
    with pytest.raises(SystemExit, match="no fold is finished in both"):
        bench.compare(a, c)
