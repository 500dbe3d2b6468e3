"""benchmarks/component_judgment.py: how well the rule's components are ranked, by hand and end to end.

Tested here: the AUC by hand (ties, one kind only); the held-out components of two folds on hand-made cases (lesion
flags, volumes in mm³, the network's mean probability, and no fold's own reference reaching the filters that score
it); the case-resampled intervals (a perfect judge, the paired gain); the lesion-free lines; and the command on a
tiny model's validation probabilities, with the error naming a case that kept none.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from helpers import load_benchmark
from hiennu.postprocessing.selection import CaseImages


@pytest.fixture
def bench():
    return load_benchmark("component_judgment")


def test_auc_by_hand(bench):
    # lesions score 0.35 and 0.8, false components 0.1 and 0.4: 3 of the 4 pairs ranked right
    assert bench.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    assert bench.auc(np.array([1.0, 1.0]), np.array([1, 0], bool)) == pytest.approx(0.5)   # a tie counts half
    assert bench.auc(np.array([0.0, 1.0]), np.array([1, 0], bool)) == pytest.approx(0.0)
    assert np.isnan(bench.auc(np.array([0.2, 0.3]), np.array([1, 1], bool)))


def _case(lesion_p: float, false_p: float, shift: int = 0, with_lesion: bool = True) -> CaseImages:
    """A (2, 12, 12) case, spacing 2 x 1 x 1 mm: a 2 x 3 x 3 rule component (the lesion when ``with_lesion``) and a
    one-voxel rule speck; the network's probability is ``lesion_p`` over the first and ``false_p`` over the speck."""
    zadc = np.zeros((2, 12, 12), np.float32)
    adc = np.full((2, 12, 12), 1200.0, np.float32)
    ref = np.zeros((2, 12, 12), bool)
    prob = np.zeros((2, 12, 12), np.float32)
    big = (slice(0, 2), slice(2 + shift, 5 + shift), slice(2, 5))
    zadc[big], prob[big] = -3.0, lesion_p
    adc[big] = 700.0
    if with_lesion:
        ref[big] = True
    zadc[1, 9, 9 - shift], prob[1, 9, 9 - shift] = -2.5, false_p
    adc[1, 9, 9 - shift] = 650.0   # under the ADC cap the lesions give (700), so the speck stays to be judged
    return CaseImages(np.zeros((2, 12, 12), np.uint8), ref, zadc, adc, (2.0, 1.0, 1.0), prob)


def _four_cases():
    cases = {"a": _case(0.9, 0.2), "b": _case(0.8, 0.1, shift=1), "c": _case(0.7, 0.3, shift=2),
             "d": _case(0.6, 0.4, shift=3)}
    return cases, {"a": 0, "b": 0, "c": 1, "d": 1}


def test_held_out_components_by_hand(bench):
    cases, fold_of = _four_cases()
    comp = bench.held_out_components(cases, fold_of)
    assert list(comp.case) == ["a", "a", "b", "b", "c", "c", "d", "d"]
    assert comp.lesion.tolist() == [True, False] * 4
    assert comp.volume_mm3 == pytest.approx([36.0, 2.0] * 4)                 # 18 voxels and 1 voxel of 2 mm³
    assert comp.features[:, 3] == pytest.approx([0.9, 0.2, 0.8, 0.1, 0.7, 0.3, 0.6, 0.4])
    assert comp.features[:, 1] == pytest.approx([4.0, 2.0] * 4)              # slices spanned times 2 mm
    # beyond the volume's two slices counts as outside: 2 x 25 of the block's 82 shell voxels, 9 of the speck's 26
    assert comp.features[:, 2] == pytest.approx([50 / 82, 9 / 26] * 4)
    assert ((comp.hand > 0) & (comp.hand < 1)).all() and ((comp.judged > 0) & (comp.judged < 1)).all()
    assert (comp.hand[comp.lesion] > comp.hand[~comp.lesion]).all()           # size alone tells them apart here
    # each case's lesion is the 36 mm³ block: the block decides all of its case's Dice, the speck 2/36 of it
    assert comp.case_lesion_mm3 == pytest.approx([36.0] * 8)
    assert comp.dice_weight == pytest.approx([1.0, 2 / 36] * 4)


def test_no_fold_s_own_reference_reaches_the_filters_that_score_it(bench):
    cases, fold_of = _four_cases()
    before = bench.held_out_components(cases, fold_of)
    changed = dict(cases)
    changed["a"] = replace(cases["a"], ref=np.zeros_like(cases["a"].ref))   # fold 0's case a loses its lesion
    after = bench.held_out_components(changed, fold_of)
    rows_a = before.case == "a"
    assert after.lesion[rows_a].tolist() == [False, False]                   # its components are now false ones
    fold0 = np.isin(before.case, ["a", "b"])
    assert after.hand[fold0] == pytest.approx(before.hand[fold0])             # but fold 0 is scored as before
    assert after.judged[fold0] == pytest.approx(before.judged[fold0])
    assert not np.allclose(after.hand[~fold0], before.hand[~fold0])           # fold 1's filters saw the change


def test_intervals_of_a_perfect_judge_and_the_paired_gain(bench):
    cases, fold_of = _four_cases()
    comp = bench.held_out_components(cases, fold_of)
    every = np.ones(len(comp.lesion), bool)
    result = bench.auc_intervals(comp, every, seed=1, rounds=40)
    assert result["mean_probability"] == pytest.approx((1.0, 1.0, 1.0))    # every lesion's p above every speck's
    assert result["outside_shell"][0] == pytest.approx(0.0)   # the lesions' shells lie more outside: ranked wrong
    gain = result[bench.GAIN]
    assert gain[0] == pytest.approx(result[bench.JUDGED][0] - result[bench.HAND][0])
    assert gain[1] <= gain[0] <= gain[2] or np.isclose(gain[1], gain[2])
    text = bench.table(comp, seed=1, rounds=40)
    assert "| mean_probability | 1.000 [1.000, 1.000] |" in text and "all 8 components (4 lesion)" in text


def test_lesion_free_lines(bench):
    cases, fold_of = _four_cases()
    cases["d"] = _case(0.6, 0.4, shift=3, with_lesion=False)
    comp = bench.held_out_components(cases, fold_of)
    assert comp.dice_weight[comp.case == "d"] == pytest.approx([1.0, 1.0])   # any component kept there zeroes its Dice
    lines = bench.lesion_free_lines(comp, cases)
    assert len(lines) == 1 and lines[0].startswith("- d (no lesion): 2 component(s) after the cap: 36 mm³ p 0.600")


def test_the_command_on_a_tiny_model_and_a_case_without_probabilities(hiennu_roots, bench, capsys):
    from helpers import tiny_model_with_validation_probabilities
    from hiennu.paths import ModelFolder

    _, model_dir = tiny_model_with_validation_probabilities(hiennu_roots)
    assert bench.main(["-d", "Tiny", "-m", model_dir.name, "-f", "0", "1", "--rounds", "40"]) == 0
    out = capsys.readouterr().out
    assert f"{model_dir.name}: 6 cases, folds [0, 1]" in out
    assert "| filter, + network's mean probability |" in out and "(no lesion)" in out
    missing = ModelFolder(model_dir).validation_probabilities(1, "case04")
    missing.unlink()
    with pytest.raises(SystemExit):
        bench.main(["-d", "Tiny", "-m", model_dir.name, "-f", "0", "1", "--rounds", "40"])
    err = capsys.readouterr().err
    assert "fold 1, case case04" in err and "no probabilities" in err


def test_weighted_auc_by_hand(bench):
    lesion = np.array([1, 1, 0, 0], bool)
    score = np.array([0.9, 0.2, 0.5, 0.1])
    # pairs (lesion, false): (0.9 vs 0.5) right, (0.9 vs 0.1) right, (0.2 vs 0.5) wrong, (0.2 vs 0.1) right
    assert bench.weighted_auc(score, lesion, np.ones(4)) == pytest.approx(0.75)
    assert bench.weighted_auc(score, lesion, np.ones(4)) == pytest.approx(bench.auc(score, lesion))
    # weights 10, 1 (lesions) and 1, 100 (false): pair weights 10, 1000, 1, 100 of 1111; the wrong pair weighs 1
    assert bench.weighted_auc(score, lesion, np.array([10.0, 1.0, 1.0, 100.0])) == pytest.approx(1110 / 1111)
    # a tie counts half, whatever the weights
    assert bench.weighted_auc(np.array([0.5, 0.5]), np.array([1, 0], bool), np.array([3.0, 7.0])) == 0.5
    assert np.isnan(bench.weighted_auc(score, np.ones(4, bool), np.ones(4)))
