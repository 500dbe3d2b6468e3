"""Report additions of the loss study: bootstrap intervals, Holm-corrected Wilcoxon tests, the Dice
box plot and the brain-cropped slice figure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hiennu.evaluation import report
from hiennu.evaluation.evaluate import summarize


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> kept monotone at 0.06)
    assert report.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = report.holm_adjust([0.2, float("nan"), 0.5])  # NaN is not counted in the family (m = 2)
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    assert report.holm_adjust([0.6, 0.7]) == [1.0, 1.0]
    assert report.holm_adjust([]) == []


def _per_case():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.8, 12)
    methods = {"TrainerDice": base, "TrainerA": base + 0.05, "TrainerB": base + rng.normal(0, 0.02, 12)}
    return {m: [{"case_id": f"c{i}", "dice": float(v), "masd": 3 * (1 - float(v)), "nsd": float(v),
                 "hd95": 10 * (1 - float(v)), "lesion_recall": 1.0, "lesion_precision": 0.5}
                for i, v in enumerate(values)] for m, values in methods.items()}


def test_wilcoxon_rows_carry_holm_corrected_p_values_per_metric(tmp_path):
    rows = report.wilcoxon_vs_reference(_per_case(), "TrainerDice")
    for metric in ("dice", "masd", "nsd"):
        family = [r for r in rows if r["metric"] == metric]
        assert [r["p_holm"] for r in family] == pytest.approx(report.holm_adjust([r["p_value"] for r in family]))
        assert all(r["p_holm"] >= r["p_value"] for r in family)
    report.write_wilcoxon_table(rows, tmp_path / "w.md", tmp_path / "w.csv")
    assert "p (Holm)" in (tmp_path / "w.md").read_text() and "p_holm" in (tmp_path / "w.csv").read_text()


def test_method_table_shows_bootstrap_intervals_hd95_and_lesion_detection(tmp_path):
    per_case = _per_case()
    extra = {"TrainerDice": {"steps": [100, 120], "train_min": [3.0, 5.0], "train_min_total": 8.0}}
    rows = report.write_method_table(per_case, tmp_path / "t.md", tmp_path / "t.csv", metrics=report.STUDY_METRICS,
                                     extra=extra, ci_metrics=report.CI_METRICS)
    s = summarize(r["dice"] for r in per_case["TrainerDice"])
    assert rows[0]["dice_ci95_low"] == s["ci95_low"] and rows[0]["dice_ci95_high"] == s["ci95_high"]
    md = (tmp_path / "t.md").read_text()
    assert f"[{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]" in md
    for label in ("Dice [95 % CI]", "MASD (mm) [95 % CI]", "NSD (2 mm) [95 % CI]", "HD95 (mm)", "lesion recall",
                  "lesion precision", "steps per fold", "training min per fold", "training min, all folds"):
        assert label in md, label
    assert "HD95 (mm) [95" not in md  # intervals only for the challenge's three metrics
    assert "110.0 ± 14.1" in md and "| 8.000 |" in md


def test_dice_boxplot_and_cropped_slices(tmp_path):
    import matplotlib.image as mpimg
    per_case = _per_case()
    per_case["rule: ZADC < -2"] = [dict(r, dice=0.4) for r in per_case["TrainerDice"]]
    report.plot_dice_boxplot(per_case, tmp_path / "dice_boxplot.png", title="demo")
    image = mpimg.imread(tmp_path / "dice_boxplot.png")
    assert image.ndim == 3 and image.shape[1] > 300
    with pytest.raises(ValueError, match="no method has a defined dice"):
        report.plot_dice_boxplot({"a": [{"case_id": "x", "dice": float("nan")}]}, tmp_path / "x.png")

    adc = np.zeros((4, 40, 50), np.float32)
    adc[:, 10:20, 15:35] = 1000.0
    assert report.brain_box_yx(adc, margin=3) == (slice(7, 23), slice(12, 38))
    assert report.brain_box_yx(adc, margin=30) == (slice(0, 40), slice(0, 50))
    assert report.brain_box_yx(np.zeros((2, 5, 6))) == (slice(0, 5), slice(0, 6))
    ref = np.zeros_like(adc, dtype=np.uint8)
    ref[2, 12:15, 20:25] = 1
    report.plot_slices({"c": adc}, {"c": ref}, {"TrainerDice": {"c": ref}}, tmp_path / "slices.png")
    with pytest.raises(ValueError, match="reference shape"):
        report.plot_slices({"c": adc}, {"c": ref[:2]}, {}, tmp_path / "bad.png")


def test_tables_show_masd_n_and_masd_over_the_cases_common_to_every_row(tmp_path):
    """A method that empties the lesion-free case gets MASD 0 there; one that misses a lesion has none there.
    Each row's MASD mean is over its own cases (n shown); the common column compares the same cases."""
    rows = {"A": [{"case_id": "free", "masd": 0.0}, {"case_id": "x", "masd": 4.0}, {"case_id": "y", "masd": 2.0}],
            "B": [{"case_id": "free", "masd": float("nan")}, {"case_id": "x", "masd": 3.0},
                  {"case_id": "y", "masd": None}]}
    assert report.common_cases(rows, "masd") == {"x"}
    out = report.write_method_table(rows, tmp_path / "t.md", tmp_path / "t.csv", metrics=("masd",))
    a, b = out
    assert (a["masd_mean"], a["masd_n"], b["masd_mean"], b["masd_n"]) == (pytest.approx(2.0), 3, 3.0, 1)
    assert (a["masd_common_mean"], b["masd_common_mean"], a["masd_common_n"]) == (4.0, 3.0, 1)
    md = (tmp_path / "t.md").read_text()
    assert "MASD (mm), 1 cases common to all rows" in md
    assert "| A | 3 | 2.000 ± 2.000 (n=3) | 4.000 |" in md and "| B | 3 | 3.000 (n=1) | 3.000 |" in md
    assert "masd_common_mean" in (tmp_path / "t.csv").read_text()
    bands = report.band_rows({m: [{**r, "band": "<1%"} for r in rs] for m, rs in rows.items()}, metrics=("masd",))
    assert [r["masd_common_n"] for r in bands] == [1, 1]


def test_paired_test_is_holm_corrected_across_the_metrics():
    per_case = _per_case()
    rows = report.paired_test_across_metrics(per_case, "TrainerA", "TrainerDice")
    assert [r["metric"] for r in rows] == ["dice", "masd", "nsd"] and all(r["n_pairs"] == 12 for r in rows)
    assert [r["p_holm"] for r in rows] == pytest.approx(report.holm_adjust([r["p_value"] for r in rows]))
    assert rows[0]["p_holm"] == pytest.approx(3 * rows[0]["p_value"])  # equal p-values: the smallest gets x3
    per_case["TrainerA"][0]["masd"] = float("nan")                    # a case without MASD leaves the pairs
    assert report.paired_test_across_metrics(per_case, "TrainerA", "TrainerDice")[1]["n_pairs"] == 11
    with pytest.raises(ValueError, match="'nope' not among"):
        report.paired_test_across_metrics(per_case, "nope", "TrainerDice")


def test_format_mean_std_signs_differences_and_drops_an_undefined_std():
    format_mean_std = report.format_mean_std
    assert format_mean_std(0.5, 0.12) == "0.500 ± 0.120"
    assert format_mean_std(0.02, 0.03, 3, signed=True) == "+0.020 ± 0.030"
    assert format_mean_std(-0.5, float("nan"), 2, signed=True) == "-0.50"
    assert format_mean_std(float("nan"), 0.1) == "n/a"
