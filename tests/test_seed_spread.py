"""benchmarks/seed_spread.py: trainings grouped by recipe, spreads over seeds and the comparisons (hand-computed)."""

from __future__ import annotations

import json
import math

import pytest

from hiennu.evaluation.evaluate import write_per_case_csv
from helpers import load_benchmark


def _training(root, name, seed, folds, network=None):
    """A model folder whose folds hold ``{fold: [(case, dice, masd, nsd), ...]}`` and record ``seed`` (and the
    configuration's ``network`` plan, default a fixed one)."""
    model = root / name
    for k, rows in folds.items():
        folder = model / f"fold_{k}" / "validation"
        folder.mkdir(parents=True)
        write_per_case_csv([{"case_id": c, "dice": d, "masd": m, "nsd": n} for c, d, m, n in rows],
                           folder / "summary_per_case.csv")
        (model / f"fold_{k}" / "debug.json").write_text(json.dumps(
            {"seed": seed, "configuration": {"network": network or {"features_per_stage": [8, 16]}}}))
    return model


@pytest.fixture
def bench():
    return load_benchmark("seed_spread")


def _recipes(bench, tmp_path):
    a1 = _training(tmp_path, "A1", 12345, {0: [("x", 0.4, 2.0, 0.5), ("y", 0.6, 1.0, 0.7)], 1: [("z", 0.8, 3.0, 0.9)]})
    a2 = _training(tmp_path, "A2", 1, {0: [("x", 0.2, 4.0, 0.3), ("y", 0.6, math.nan, 0.7)], 1: [("z", 0.4, 1.0, 0.5)]})
    b1 = _training(tmp_path, "B1", 12345, {0: [("x", 0.5, 1.0, 0.6), ("y", 0.9, 2.0, 0.9)], 1: [("z", 0.7, 2.0, 0.8)]})
    return bench.parse_recipes([["a", str(a1), str(a2)], ["b", str(b1)]])


def test_each_training_scores_masd_over_the_cases_every_training_defines(bench, tmp_path):
    text = bench.report(_recipes(bench, tmp_path))
    assert "Folds finished in every training: 0, 1 (3 cases)" in text
    assert "MASD over the 2 cases where every training defines it" in text       # y is undefined in A2
    # A1: Dice (0.4 + 0.6 + 0.8) / 3 = 0.6, MASD over x and z (2 + 3) / 2 = 2.5, NSD (0.5 + 0.7 + 0.9) / 3 = 0.7
    assert "| a | A1 | 12345 | 0.600 | 2.50 | 0.700 |" in text
    # A2: Dice 1.2 / 3 = 0.4, MASD (4 + 1) / 2 = 2.5, NSD 1.5 / 3 = 0.5
    assert "| a | A2 | 1 | 0.400 | 2.50 | 0.500 |" in text
    assert "| b | B1 | 12345 | 0.700 | 1.50 | 0.767 |" in text


def test_recipe_spread_case_spread_and_fold_means(bench, tmp_path):
    text = bench.report(_recipes(bench, tmp_path))
    # Dice 0.6 and 0.4: mean 0.5, SD (ddof 1) sqrt(0.02) = 0.1414; per-case SDs: x 0.1414, y 0, z 0.2828, mean 0.1414;
    # the ranges 0.2, 0 and 0.4: only z moves by more than 0.2
    assert "| a | 2 | 0.500 ± 0.141 [0.400, 0.600] | 2.50 ± 0.00 [2.50, 2.50] | 0.600 ± 0.141 [0.500, 0.700] " \
           "| 0.141 | 1 of 3 |" in text
    assert "| b | 1 | 0.700 (one training) | 1.50 (one training) | 0.767 (one training) | n/a | n/a |" in text
    assert "| a | A2 | 0.400 | 0.400 |" in text                                  # fold 0: (0.2 + 0.6) / 2; fold 1: 0.4


def test_comparison_uses_seed_means_and_per_case_means(bench, tmp_path):
    text = bench.report(_recipes(bench, tmp_path))
    assert "**b against a** (1 against 2 trainings)" in text
    assert "| Dice | +0.200 | n/a | n/a |" in text                                # 0.7 - 0.5; Welch needs two a side
    assert "| MASD (mm) | -1.00 | n/a | n/a |" in text
    # per case, a averaged over A1 and A2: x 0.3, y 0.6, z 0.6; b: 0.5, 0.9, 0.7; differences 0.2, 0.3, 0.1;
    # MASD: y undefined in A2, so a's y is undefined and the pairs are x and z only
    assert "| b | a | Dice | 3 | +0.2000 |" in text
    assert "| b | a | MASD (mm) | 2 |" in text


def test_welch_test_with_two_trainings_a_side(bench, tmp_path):
    models = [_training(tmp_path, n, s, {0: [("x", d, 1.0, d)]}) for n, s, d in
              (("A1", 1, 0.40), ("A2", 2, 0.42), ("B1", 1, 0.60), ("B2", 2, 0.64))]
    text = bench.report(bench.parse_recipes([["a", str(models[0]), str(models[1])],
                                             ["b", str(models[2]), str(models[3])]]))
    from scipy import stats
    expected = stats.ttest_ind([0.60, 0.64], [0.40, 0.42], equal_var=False)
    assert f"| Dice | +0.210 | {expected.statistic:.2f} | {expected.pvalue:.3g} |" in text
    assert "| MASD (mm) | +0.00 | n/a | n/a |" in text                             # 1.0 everywhere: no t to compute


def test_different_splits_missing_folds_and_bad_arguments_are_refused(bench, tmp_path):
    a = _training(tmp_path, "A", 1, {0: [("x", 0.4, 2.0, 0.5)]})
    b = _training(tmp_path, "B", 2, {0: [("w", 0.5, 1.0, 0.6)]})
    c = _training(tmp_path, "C", 3, {1: [("x", 0.5, 1.0, 0.6)]})
    with pytest.raises(SystemExit, match="fold 0: B validated other cases than A"):
        bench.report(bench.parse_recipes([["a", str(a), str(b)]]))
    with pytest.raises(SystemExit, match="no fold is finished in every training"):
        bench.report(bench.parse_recipes([["a", str(a)], ["c", str(c)]]))
    with pytest.raises(SystemExit, match="give a name and at least one model folder"):
        bench.parse_recipes([["a"]])
    with pytest.raises(SystemExit, match="is not a folder"):
        bench.parse_recipes([["a", str(tmp_path / "missing")]])
    with pytest.raises(SystemExit, match="the name is given twice"):
        bench.parse_recipes([["a", str(a)], ["a", str(b)]])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no finished fold"):
        bench.parse_recipes([["a", str(tmp_path / "empty")]])


def test_trainings_of_the_same_seed_are_paired(bench, tmp_path):
    def model(name, seed, dice):
        return str(_training(tmp_path, name, seed, {0: [("x", dice, 1.0 + dice, dice)]}))
    recipes = bench.parse_recipes([["a", model("A1", 1, 0.40), model("A2", 2, 0.50), model("A3", 3, 0.60)],
                                   ["b", model("B1", 1, 0.45), model("B2", 2, 0.58), model("B9", 9, 0.90)]])
    text = bench.report(recipes)
    # seeds 1 and 2 are shared (3 and 9 are not): differences +0.05 and +0.08, mean +0.065, SD 0.0212
    assert "Paired by seed (2 shared: 1, 2; a shared seed means the same initial weights and batches): b minus a " \
           "within each seed" in text
    from scipy import stats
    expected = stats.ttest_rel([0.45, 0.58], [0.40, 0.50])
    assert f"| Dice | +0.050 | +0.080 | +0.065 ± 0.021 | {expected.statistic:.2f} | {expected.pvalue:.3g} |" in text
    assert "| MASD (mm) | +0.05 | +0.08 | +0.07 ± 0.02 |" in text


def test_no_shared_seed_means_no_paired_rows(bench, tmp_path):
    a = _training(tmp_path, "A", 1, {0: [("x", 0.4, 2.0, 0.5)]})
    b = _training(tmp_path, "B", 2, {0: [("x", 0.5, 1.0, 0.6)]})
    assert "Paired by seed" not in bench.report(bench.parse_recipes([["a", str(a)], ["b", str(b)]]))


def test_pairs_of_different_networks_share_batches_only(bench, tmp_path):
    a = _training(tmp_path, "A", 1, {0: [("x", 0.4, 2.0, 0.5)]}, network={"features_per_stage": [8, 16]})
    b = _training(tmp_path, "B", 1, {0: [("x", 0.5, 1.0, 0.6)]}, network={"features_per_stage": [12, 24]})
    text = bench.report(bench.parse_recipes([["a", str(a)], ["b", str(b)]]))
    assert "a shared seed means not the same initial weights (the recipes build different networks): little is " \
           "paired" in text


def test_a_damaged_fold_record_is_named(bench, tmp_path):
    a = _training(tmp_path, "A", 1, {0: [("x", 0.4, 2.0, 0.5)]})
    (a / "fold_0" / "debug.json").write_text("{not json")
    with pytest.raises(SystemExit, match="debug.json: not readable JSON"):
        bench.parse_recipes([["a", str(a)]])
