"""benchmarks/component_classifier.py: the rule's components cut out, judged by a CNN per fold, painted back.

Tested here: the crops and numbers of hand-made components (where the component, the rest of the rule and the brain
land in the crop, the lesion flags, the centroid's place in the brain); the painting; the CNN deciding alone, by
hand; and on a tiny model, the folder it writes (every case's scores in [0, 1], one value per component, 0 off the
rule, masks hard-linked), that no fold's own references reach the judge that scores it, that an existing folder is
refused and nothing half-written is left, and the command's output.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import load_benchmark
from hiennu.postprocessing.selection import CaseImages


@pytest.fixture
def bench():
    return load_benchmark("component_classifier")


def _two_components() -> CaseImages:
    """A (6, 20, 20) case at the judge's own sample spacing (3 x 2.5 x 2.5 mm), brain everywhere but the first
    y row: a 2 x 2 x 2 rule component at z 2-3, y 4-5, x 4-5 (the lesion) and a one-voxel one at (4, 14, 15)."""
    zadc = np.zeros((6, 20, 20), np.float32)
    adc = np.full((6, 20, 20), 1500.0, np.float32)
    adc[:, 0, :] = 0.0
    zadc[2:4, 4:6, 4:6] = -3.0
    adc[2:4, 4:6, 4:6] = 800.0
    zadc[4, 14, 15] = -2.5
    ref = np.zeros((6, 20, 20), bool)
    ref[2:4, 4:6, 4:6] = True
    return CaseImages(pred=ref.astype(np.uint8), ref=ref, zadc=zadc, adc=adc, spacing_zyx=(3.0, 2.5, 2.5))


def test_case_components_by_hand(bench):
    parts = bench.case_components(_two_components())
    assert parts.crops.shape == (2, bench.CHANNELS) + tuple(s + 2 * bench.SHIFT for s in bench.CROP)
    assert parts.lesion.tolist() == [True, False]
    # the first component's centroid (2.5, 4.5, 4.5) sits between samples 9 and 10 of the 20-sample z axis and 17
    # and 18 of the 36-sample y and x axes, so its eight voxels fill exactly those samples
    crop = parts.crops[0]
    component = np.zeros(crop.shape[1:], np.float32)
    component[9:11, 17:19, 17:19] = 1.0
    np.testing.assert_array_equal(crop[2], component)
    np.testing.assert_allclose(crop[0][component > 0], 0.8)            # ADC / 1000
    np.testing.assert_allclose(crop[1][component > 0], -0.6)           # ZADC / 5
    # the other component at (4, 14, 15) is 2, 10 and 11 samples away: sample (11, 27, 28), in the "rest" channel
    assert crop[3].sum() == 1.0 and crop[3][11, 27, 28] == 1.0
    assert crop[4][9, 17, 17] == 1.0 and crop[4][9, 13, 17] == 0.0     # y row 0 is not brain; outside the image 0
    # scalars: log volume (8 voxels of 18.75 mm³), extent along z (2 slices of 3 mm), outside share 0, then the
    # centroid's place in the brain's box (z 0-5, y 1-19, x 0-19), x as the distance from the middle
    np.testing.assert_allclose(parts.scalars[0, :2], [np.log(8 * 18.75), 6.0])
    np.testing.assert_allclose(parts.scalars[0, 3:], [2.5 / 5, 3.5 / 18, abs(4.5 / 19 - 0.5)])
    assert parts.labels.max() == 2 and (parts.labels == 1).sum() == 8


def test_no_component_gives_empty_arrays(bench):
    c = _two_components()
    c.zadc[:] = 0.0
    parts = bench.case_components(c)
    assert parts.crops.shape[0] == 0 and parts.scalars.shape == (0, bench.SCALARS) and not parts.labels.any()


def test_painted(bench):
    labels = np.array([[0, 1, 1], [2, 0, 2]])
    np.testing.assert_allclose(bench.painted(labels, np.array([0.25, 0.75])), [[0, 0.25, 0.25], [0.75, 0, 0.75]])


def test_own_decision_by_hand(bench):
    # fold 0 (case a, no cap: fold 1 holds no lesion): the lesion scores 0.7 (kept), the speck 0.3 (dropped) -> 1.
    # fold 1 (case b, lesion-free): the cap is fold 0's lesion ADC, 800; the speck scores 0.6, so it is kept -> 0
    # when its ADC is 700, and the cap removes it -> 1 when its ADC is 1500
    a = _two_components()
    a.probabilities = np.where(a.zadc < -2.7, 0.7, np.where(a.zadc < -2, 0.3, 0.0)).astype(np.float32)
    b = _two_components()
    b.ref[:] = False
    b.zadc[2:4, 4:6, 4:6] = 0.0
    b.probabilities = np.where(b.zadc < -2, 0.6, 0.0).astype(np.float32)
    b.adc[4, 14, 15] = 700.0
    assert bench.own_decision_dice({"a": a, "b": b}, {"a": 0, "b": 1}) == {"a": 1.0, "b": 0.0}
    b.adc[4, 14, 15] = 1500.0
    assert bench.own_decision_dice({"a": a, "b": b}, {"a": 0, "b": 1}) == {"a": 1.0, "b": 1.0}


def _scores(model_dir, fold, case):
    from hiennu.paths import ModelFolder

    with np.load(ModelFolder(model_dir).validation_probabilities(fold, case)) as f:
        return f["probabilities"]


def test_the_judged_model_folder_on_a_tiny_model(hiennu_roots, bench):
    from helpers import TINY_FOLD_CASES, tiny_model_with_validation_probabilities
    from hiennu.errors import HiennuError
    from hiennu.io.image import read_image, write_image
    from hiennu.masks import rule_mask
    from hiennu.paths import ModelFolder

    raw, model_dir = tiny_model_with_validation_probabilities(hiennu_roots)
    out = model_dir.parent / "Judge__hiennuPlans__3d_fullres"
    bench.write_judged_model(model_dir, out, "Dataset001_Tiny", epochs=2, log=lambda s: None, folds=(0, 1))
    assert not out.with_name(out.name + ".partial").exists()
    for fold, cases in TINY_FOLD_CASES.items():
        for case in cases:
            scores = _scores(out, fold, case)
            zadc, _ = read_image(raw / "imagesTr" / f"{case}_0001.mha")
            adc, _ = read_image(raw / "imagesTr" / f"{case}_0000.mha")
            rule = rule_mask(zadc, adc)
            assert scores.shape == zadc.shape and scores.min() >= 0.0 and scores.max() <= 1.0
            assert not scores[~rule].any() and (scores[rule] > 0).all()
            mask = ModelFolder(out).validation_dir(fold) / f"{case}.mha"
            assert os.path.samefile(mask, ModelFolder(model_dir).validation_dir(fold) / f"{case}.mha")
    # fold 0's scores come from the judge trained on fold 1: making every rule speck of case00 and case02 a lesion
    # in their references (case01 keeps both kinds) changes none of them, and changes fold 1's judge
    for case in ("case00", "case02"):
        label, geometry = read_image(raw / "labelsTr" / f"{case}.mha", dtype=np.uint8)
        zadc, _ = read_image(raw / "imagesTr" / f"{case}_0001.mha")
        adc, _ = read_image(raw / "imagesTr" / f"{case}_0000.mha")
        assert rule_mask(zadc, adc).any()
        write_image(((label > 0) | rule_mask(zadc, adc)).astype(np.uint8), geometry, raw / "labelsTr" / f"{case}.mha")
    again = model_dir.parent / "Judge2__hiennuPlans__3d_fullres"
    bench.write_judged_model(model_dir, again, "Dataset001_Tiny", epochs=2, log=lambda s: None, folds=(0, 1))
    for case in TINY_FOLD_CASES[0]:
        np.testing.assert_array_equal(_scores(again, 0, case), _scores(out, 0, case))
    assert any(not np.array_equal(_scores(again, 1, c), _scores(out, 1, c)) for c in TINY_FOLD_CASES[1])
    with pytest.raises(HiennuError, match="exists; choose another -o"):
        bench.write_judged_model(model_dir, out, "Dataset001_Tiny", epochs=2, log=lambda s: None, folds=(0, 1))


def test_the_command_on_a_tiny_model(hiennu_roots, bench, capsys):
    from helpers import tiny_model_with_validation_probabilities

    _, model_dir = tiny_model_with_validation_probabilities(hiennu_roots)
    assert bench.main(["-d", "Tiny", "-m", model_dir.name, "-o", "Judge__hiennuPlans__3d_fullres", "--epochs", "1", "-f", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "fold 1: 3 cases scored" in out and "nested Dice over 6 cases" in out
    with pytest.raises(SystemExit):
        bench.main(["-d", "Tiny", "-m", model_dir.name, "-o", "Judge__hiennuPlans__3d_fullres", "-f", "0", "1"])
    assert "exists; choose another -o" in capsys.readouterr().err
