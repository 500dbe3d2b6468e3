"""Issue 24: folds of other split seeds (never over splits_final.json), the paired test of model +
post-processing against the rule + post-processing (Holm across Dice, MASD, NSD, with n), and the
tables of benchmarks/postprocessing_cv.py (MASD's n and over the common cases; mean and SD over splits)."""

from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import pytest

from hiennu.errors import HiennuError
from hiennu.paths import splits_file_name
from hiennu.planning import splits
from hiennu.study import split_seeds
from hiennu.study.postprocessed_comparison import (PAIRED_NOTE, RULE_METHOD, compare_models_with_rule,
                                                   comparison_markdown, paired_against_rule)
from helpers import load_benchmark, raw_and_model_with_false_positives

FRACTIONS = {f"case_{i:02d}": f for i, f in enumerate([0.0, 0.0, 0.003, 0.004, 0.008, 0.02, 0.03, 0.04, 0.06, 0.1,
                                                       0.001, 0.002])}


def _benchmark():
    return load_benchmark("postprocessing_cv")


@pytest.fixture
def dataset_with_default_split(hiennu_roots, monkeypatch):
    """A preprocessed dataset folder with splits_final.json and a (stubbed) fingerprint of 12 cases."""
    folder = hiennu_roots["hiennu_preprocessed"] / "Dataset001_Tiny"
    folder.mkdir()
    splits.write_splits_if_absent(folder / splits.SPLITS_FILE, FRACTIONS)
    (folder / "dataset_fingerprint.json").write_text("{}")
    fingerprint = SimpleNamespace(cases=[SimpleNamespace(case_id=c, lesion_fraction=f) for c, f in FRACTIONS.items()])
    monkeypatch.setattr(split_seeds, "load_fingerprint", lambda path: fingerprint)
    return folder


def test_the_folds_file_is_named_once():
    assert splits.SPLITS_FILE == splits_file_name() == "splits_final.json"
    assert splits_file_name(3) == "splits_seed3.json"


def test_another_split_seed_writes_its_own_file_and_leaves_splits_final_alone(dataset_with_default_split):
    folder = dataset_with_default_split
    final = folder / "splits_final.json"
    before = (final.read_bytes(), final.stat().st_mtime_ns)
    path = split_seeds.ensure_seed_splits("Tiny", 3)
    assert path == folder / "splits_seed3.json" and path.is_file()
    assert (final.read_bytes(), final.stat().st_mtime_ns) == before
    written = json.loads(path.read_text())
    assert written == splits.make_splits(FRACTIONS, seed=3) != json.loads(final.read_text())
    assert sorted(c for fold in written for c in fold["val"]) == sorted(FRACTIONS)
    # a seed's folds stay stable: an existing file is kept as it is
    path.write_text(json.dumps(written[::-1]))
    assert split_seeds.ensure_seed_splits("Tiny", 3) == path and json.loads(path.read_text()) == written[::-1]
    # None is the default split, returned untouched
    assert split_seeds.ensure_seed_splits("Tiny", None) == final and final.read_bytes() == before[0]


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_a_bad_split_seed_is_refused_clearly(dataset_with_default_split, bad):
    with pytest.raises(HiennuError, match="split seed must be a whole number >= 0"):
        split_seeds.ensure_seed_splits("Tiny", bad)
    assert sorted(p.name for p in dataset_with_default_split.glob("splits_*")) == ["splits_final.json"]


def test_the_benchmark_reads_the_folds_of_a_split_seed(dataset_with_default_split):
    bench = _benchmark()
    assert bench.split_seed_arg("default") is None and bench.split_seed_arg("4") == 4
    for bad in ("-1", "x", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number >= 0"):
            bench.split_seed_arg(bad)
    folds, path = bench.split_folds("Dataset001_Tiny", 4)
    assert path.name == "splits_seed4.json"
    assert folds == {c: k for k, fold in enumerate(splits.make_splits(FRACTIONS, seed=4)) for c in fold["val"]}
    default, path = bench.split_folds("Dataset001_Tiny", None)
    assert path.name == "splits_final.json" and default != folds
    # --splits-dir: another seed's file goes there, the preprocessed folder stays unwritten
    elsewhere = dataset_with_default_split.parent.parent / "my_splits"
    folds5, path = bench.split_folds("Dataset001_Tiny", 5, elsewhere)
    assert path == elsewhere / "splits_seed5.json" and not (dataset_with_default_split / "splits_seed5.json").exists()
    assert bench.split_folds("Dataset001_Tiny", None, elsewhere)[1] == dataset_with_default_split / "splits_final.json"


def _known_differences():
    """8 cases: the model's Dice above the rule's on every case, its MASD lower on the 6 cases where both have
    one, NSD up and down alternately."""
    rule, model = [], []
    for i in range(8):
        rule.append({"case_id": f"c{i}", "dice": 0.5, "masd": 4.0, "nsd": 0.6})
        model.append({"case_id": f"c{i}", "dice": 0.5 + 0.01 * (i + 1), "masd": 4.0 - 0.1 * (i + 1),
                      "nsd": 0.6 + (-1) ** i * 0.01 * (i + 1)})
    model[0]["masd"] = float("nan")   # the model emptied a case: no MASD there
    rule[7]["masd"] = None            # the rule missed one
    return {"M + post-processing": model, RULE_METHOD: rule}


def test_paired_test_against_the_rule_has_n_and_is_holm_corrected_across_the_metrics():
    tests = paired_against_rule(_known_differences())
    by_metric = {r["metric"]: r for r in tests}
    assert [r["metric"] for r in tests] == ["dice", "masd", "nsd"]
    assert [by_metric[m]["n_pairs"] for m in ("dice", "masd", "nsd")] == [8, 6, 8]
    # every difference one way: the exact two-sided p is 2 / 2^n
    assert by_metric["dice"]["p_value"] == pytest.approx(2 / 2 ** 8)
    assert by_metric["masd"]["p_value"] == pytest.approx(2 / 2 ** 6)
    assert by_metric["dice"]["mean_difference"] == pytest.approx(0.045)
    assert by_metric["masd"]["mean_difference"] == pytest.approx(-0.45)   # cases c1..c6
    p_nsd = by_metric["nsd"]["p_value"]
    assert p_nsd > 2 / 2 ** 6
    # Holm's step-down over the three: the smallest x3, the next x2 (monotone), the largest x1
    assert by_metric["dice"]["p_holm"] == pytest.approx(3 * 2 / 2 ** 8)
    assert by_metric["masd"]["p_holm"] == pytest.approx(max(3 * 2 / 2 ** 8, 2 * 2 / 2 ** 6))
    assert by_metric["nsd"]["p_holm"] == pytest.approx(min(1.0, max(2 * 2 / 2 ** 6, p_nsd)))


def test_comparison_markdown_shows_n_beside_each_test_and_masd_over_common_cases():
    text, tests = comparison_markdown(_known_differences())
    assert PAIRED_NOTE in text and "n (pairs)" in text and "p (Holm, across metrics)" in text
    assert "| M + post-processing | rule: ZADC < -2 + post-processing | MASD (mm) | 6 | -0.4500 |" in text
    assert "MASD (mm), 6 cases common to all rows" in text
    assert "(n=7)" in text  # each row's own MASD count: 7 cases defined for either method


def test_compare_models_with_rule_writes_and_scores_both_postprocessed_mask_sets(tmp_path):
    raw, model = raw_and_model_with_false_positives(tmp_path)
    result = compare_models_with_rule({"TrainerX": model}, {}, raw, [0, 1], tmp_path / "cmp", num_processes=1)
    assert set(result["per_case"]) == {"TrainerX + post-processing", RULE_METHOD}
    assert sorted((tmp_path / "cmp" / "rule").glob("case_*.mha")) and (tmp_path / "cmp" / "0_model" / "summary.json").is_file()
    # the 3-voxel false positive goes by the nested choice; the rule is exactly the lesion here
    assert all(r["dice"] == 1.0 for rows in result["per_case"].values() for r in rows)
    assert [r["n_pairs"] for r in result["tests"]] == [4, 4, 4]
    assert all(r["p_value"] == 1.0 for r in result["tests"])  # no difference at all
    assert "n (pairs)" in result["markdown"]


def test_the_study_writes_the_comparison_or_says_why_not(tmp_path):
    from hiennu.study.loss_study import write_postprocessed_vs_rule

    raw, model = raw_and_model_with_false_positives(tmp_path)
    runs = {"TrainerX": [SimpleNamespace(fold_dir=model / "fold_0"), SimpleNamespace(fold_dir=model / "fold_1")]}
    out = tmp_path / "study"
    out.mkdir()
    write_postprocessed_vs_rule(runs, {}, raw, out, SimpleNamespace(folds=(0,), num_processes=1))
    assert "Not compared" in (out / "postprocessed_vs_rule.md").read_text()
    write_postprocessed_vs_rule(runs, {"TrainerX": {"nested": {"chosen_per_fold": {
        "0": {"min_component_voxels": 5}, "1": {"min_component_voxels": 5}}}}}, raw, out,
        SimpleNamespace(folds=(0, 1), num_processes=1))
    text = (out / "postprocessed_vs_rule.md").read_text()
    assert "| TrainerX + post-processing | rule: ZADC < -2 + post-processing | Dice | 4 |" in text
    assert "hiennu_find_best_configuration" not in text  # one trainer: no choice to estimate
    assert "p_holm" in (out / "postprocessed_vs_rule.csv").read_text()


def test_the_study_names_the_command_that_estimates_choosing_its_loss(tmp_path):
    from hiennu.study.loss_study import loss_choice_command

    def command(folder, *models):
        runs = {m.split("__")[0]: [SimpleNamespace(fold_dir=tmp_path / folder / m / "fold_0")] for m in models}
        return loss_choice_command(runs)

    data, seed = "Dataset001_BONBID", "Dataset001_BONBID/split_seed_3"
    assert command(data, "TrainerDice__hiennuPlans__2d", "TrainerTversky__hiennuPlans__2d") == (
        "hiennu_find_best_configuration -d Dataset001_BONBID -c 2d -tr TrainerDice TrainerTversky -p hiennuPlans "
        "--no-ensembles --nested-choice")
    assert command(data, "TrainerDice__hiennuPlans__2d") is None  # nothing to choose
    assert command(data, "TrainerDice__hiennuPlans__2d", "TrainerHDT__NoBD__2d") is None  # two plans
    assert command(seed, "TrainerDice__hiennuPlans__2d", "TrainerHDT__hiennuPlans__2d") is None


def _summary(per_case, **means):
    metrics = {}
    for key in ("dice", "masd", "nsd", "hd95", "lesion_recall", "lesion_precision"):
        values = [r[key] for r in per_case if key in r and r[key] is not None and not math.isnan(r[key])]
        mean = means.get(key, sum(values) / len(values) if values else float("nan"))
        metrics[key] = {"mean": mean, "ci95_low": mean, "ci95_high": mean, "n": len(values)}
    return {"metrics": metrics, "per_case": per_case, "bands": {}}


def _method(plain_rows, nested_rows, **nested_means):
    return {"summaries": {"plain": _summary(plain_rows), "nested": _summary(nested_rows, **nested_means)},
            "pooled_choice": "none", "pooled_dice": 0.5, "nested_choices": {"0": "none"}}


def test_benchmark_table_shows_masd_n_common_masd_and_the_paired_test():
    bench = _benchmark()
    rows = _known_differences()
    rule = [{**r, "hd95": 1.0, "lesion_recall": 1.0, "lesion_precision": 1.0} for r in rows[RULE_METHOD]]
    model = [{**r, "hd95": 1.0, "lesion_recall": 1.0, "lesion_precision": 1.0} for r in rows["M + post-processing"]]
    text = bench.results_table({"M": _method(rule, model), bench.RULE: _method(rule, rule)})
    assert "MASD (mm), 6 cases common to all rows" in text
    assert "(n=7) | 3.55 |" in text          # the model's nested row: 7 cases with MASD; 3.55 over the common 6
    assert "(n=7) | 4.00 |" in text          # the rule's rows
    assert "| M + post-processing | rule: ZADC < -2 + post-processing | Dice | 8 |" in text
    rule_only = bench.results_table({bench.RULE: _method(rule, rule)})
    assert "n (pairs)" not in rule_only and "MASD (mm), 7 cases common to all rows" in rule_only


def test_benchmark_seed_table_gives_mean_and_sd_over_the_splits():
    bench = _benchmark()
    rows = [{"case_id": "a", "dice": 0.5, "masd": 1.0, "nsd": 0.5, "hd95": 1.0, "lesion_recall": 1.0,
             "lesion_precision": 1.0}]
    by_seed = {None: {bench.RULE: _method(rows, rows, dice=0.6)}, 0: {bench.RULE: _method(rows, rows, dice=0.7)},
               1: {bench.RULE: _method(rows, rows, dice=0.8)}}
    text = bench.seeds_table(by_seed)
    assert "| rule: ZADC < -2 | default | 0.600 |" in text and "| rule: ZADC < -2 | 1 | 0.800 |" in text
    assert "| **rule: ZADC < -2** | mean ± SD [min, max] over 3 splits | 0.700 ± 0.100 [0.600, 0.800] |" in text


def test_benchmark_seed_table_gives_the_model_margin_over_the_rule_per_split_with_its_sd():
    bench = _benchmark()
    rows = [{"case_id": "a", "dice": 0.5, "masd": 1.0, "nsd": 0.5, "hd95": 1.0, "lesion_recall": 1.0,
             "lesion_precision": 1.0}]
    # model minus rule, Dice: +0.05, -0.01, +0.02 (mean +0.020, SD 0.030); MASD: -1.0, +0.5, -0.5 mm (mean -0.33)
    by_seed = {seed: {"M": _method(rows, rows, dice=rule_dice + d, masd=3.0 + m),
                      bench.RULE: _method(rows, rows, dice=rule_dice, masd=3.0)}
               for seed, rule_dice, d, m in ((None, 0.6, 0.05, -1.0), (0, 0.7, -0.01, 0.5), (1, 0.5, 0.02, -0.5))}
    text = bench.seeds_table(by_seed)
    assert "| **M** | mean ± SD [min, max] over 3 splits |" in text   # the model's own rows stay
    assert "M + post-processing minus rule: ZADC < -2 + post-processing" in text
    assert "| default | +0.050 | -1.00 | +0.000 |" in text and "| 0 | -0.010 | +0.50 |" in text
    assert "| **mean ± SD over 3 splits** | +0.020 ± 0.030 | -0.33 ± 0.76 | +0.000 ± 0.000 |" in text
    assert "| splits where the model is better (of 3) | 2 | 2 | 0 |" in text    # lower MASD is better
    rule_only = bench.seeds_table({seed: {bench.RULE: r[bench.RULE]} for seed, r in by_seed.items()})
    assert "minus" not in rule_only
    one_split = bench.seeds_table({1: by_seed[1]})   # one split has no SD: said so, not "± nan"
    assert "nan" not in one_split
    assert "| **mean ± SD over 1 splits** | +0.020 (one split: no SD) | -0.50 (one split: no SD) |" in one_split
    assert "| **M** | mean ± SD [min, max] over 1 splits | 0.520 (one split: no SD) [0.520, 0.520] |" in one_split
