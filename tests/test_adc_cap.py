"""The ADC cap of the post-processing and the nested cross-validated choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hiennu.errors import HiennuError
from hiennu.postprocessing.candidates import adc_cap_candidates, candidates
from hiennu.postprocessing.record import POSTPROCESSING_FILE, PostProcessing, apply_postprocessing, load_postprocessing
from hiennu.postprocessing.selection import CaseImages, nested_estimate, postprocessing_table, select_postprocessing
from hiennu.inference.predictor import Predictor
from helpers import GEOM, case_arrays, make_model_dir, network_mask, raw_and_model_with_false_positives, stub_network


def test_cap_removes_voxels_above_it_before_the_component_rule():
    mask = np.zeros((2, 6, 6), np.uint8)
    mask[0, 0:2, 0:3] = 1                  # 6 voxels: 3 of them with CSF-like ADC
    mask[1, 4, 4] = 1                      # a single voxel of low ADC
    adc = np.full(mask.shape, 900.0, np.float32)
    adc[0, 0, 0:3] = 2500.0
    capped = apply_postprocessing(mask, PostProcessing(max_adc=1400.0), adc=adc)
    assert capped.dtype == np.uint8 and capped.sum() == 4 and not capped[0, 0].any()
    # the cap comes first: the 6-voxel component shrinks to 3 and then falls under the size rule
    assert apply_postprocessing(mask, PostProcessing(min_component_voxels=4, max_adc=1400.0), adc=adc).sum() == 0
    assert apply_postprocessing(mask, PostProcessing(min_component_voxels=4)).sum() == 6
    assert apply_postprocessing(mask, PostProcessing(max_adc=2500.0), adc=adc).sum() == 7  # "above" is strict
    with pytest.raises(HiennuError, match="needs the case's ADC"):
        apply_postprocessing(mask, PostProcessing(max_adc=1400.0))
    with pytest.raises(HiennuError, match=r"ADC shape \(1, 6, 6\) differs"):
        apply_postprocessing(mask, PostProcessing(max_adc=1400.0), adc=adc[:1])


def test_cap_candidates_are_rounded_quantiles_of_the_lesion_adc():
    values = np.arange(1, 1001, dtype=np.float64)  # numpy's linear quantile: 1 + q * 999
    assert adc_cap_candidates(values) == [990.0, 995.0, 999.0]
    assert adc_cap_candidates(values, (0.5, 0.5)) == [500.0]
    assert adc_cap_candidates(np.array([])) == []
    options = candidates((5,), (1300.0,))
    assert [p.name for p in options][-2:] == ["ADC <= 1300", "ADC <= 1300 + remove < 5 vox"]
    assert not options[-1].is_identity and options[-1].needs_images and not options[1].needs_images


def test_cap_record_round_trip_and_refusals(tmp_path):
    post = PostProcessing(min_component_voxels=5, max_adc=1346.0)
    (tmp_path / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": post.to_dict()}))
    assert load_postprocessing(tmp_path) == post
    old = {"min_component_voxels": 10, "keep_touching_rule": False, "rule_threshold": -2.0}  # records before the cap
    (tmp_path / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": old}))
    assert load_postprocessing(tmp_path) == PostProcessing(min_component_voxels=10)
    for bad in (-5, 0, True, "1400"):
        (tmp_path / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": {**old, "max_adc": bad}}))
        with pytest.raises(HiennuError, match="max_adc must be null or a positive number"):
            load_postprocessing(tmp_path)


def _case(pred_voxels: int, fp_adc: float) -> CaseImages:
    """A 1-voxel-thick case: a 4-voxel lesion predicted right plus ``pred_voxels`` false voxels of ADC ``fp_adc``."""
    ref = np.zeros((1, 4, 16), bool)
    ref[0, 0, :4] = True
    pred = ref.astype(np.uint8)
    pred[0, 2, :pred_voxels] = 1
    adc = np.full(ref.shape, 1000.0, np.float32)
    adc[0, 2] = fp_adc
    return CaseImages(pred, ref, np.zeros(ref.shape, np.float32), adc, (2.0, 1.0, 1.0))


def test_nested_choice_is_made_without_the_held_out_fold():
    # fold 0: false positives of high ADC (a cap removes them); fold 1: a perfect prediction (nothing helps)
    cases = {"a": _case(8, 3000.0), "b": _case(8, 3000.0), "c": _case(0, 1000.0), "d": _case(0, 1000.0)}
    fold_of = {"a": 0, "b": 0, "c": 1, "d": 1}
    per_case, choices = nested_estimate(cases, fold_of, sizes=(5,))
    # fold 0 is judged by what fold 1's cases prefer: nothing beats "none" there, so fold 0 keeps its errors
    assert choices[0] == PostProcessing()
    assert per_case["a"] == pytest.approx(2 * 4 / (4 + 12))
    # fold 1's choice comes from fold 0: the cap at the lesions' ADC (1000) removes every false voxel
    assert choices[1] == PostProcessing(max_adc=1000.0)
    assert per_case["c"] == 1.0 and per_case["d"] == 1.0
    single, single_choice = nested_estimate({"a": cases["a"]}, {"a": 0}, sizes=(5,))
    assert single_choice == {0: PostProcessing()}


def test_predictor_applies_a_stored_cap(tmp_path):
    model_dir = make_model_dir(tmp_path / "results")
    images = case_arrays()
    images[0][:] = 1000.0
    images[0][:, :8, :] = 2000.0          # the blob at y 2:5 sits on CSF-like ADC
    post = PostProcessing(max_adc=1500.0)
    expected = network_mask().copy()
    expected[:, :8, :] = 0
    (model_dir / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": post.to_dict()}))
    predictor = stub_network(Predictor.from_model_dir(model_dir, device="cpu", use_mirroring=False))
    assert predictor.postprocessing == post
    assert np.array_equal(predictor.predict_case(images, GEOM)[0], expected)


def test_selection_records_the_nested_estimate(tmp_path):
    raw, model = raw_and_model_with_false_positives(tmp_path)
    record = select_postprocessing(model, raw, folds=[0, 1])
    nested = record["nested"]
    assert set(nested["choices"]) == {"0", "1"}
    assert set(nested["per_case_dice"]) == set(record["case_ids"])
    assert nested["cv_dice"] == pytest.approx(np.mean(list(nested["per_case_dice"].values())))
    assert nested["cv_dice"] <= record["chosen_dice"] + 1e-12  # choosing on the scored cases can only flatter
    assert postprocessing_table({"TrainerX": record}).splitlines()[2].endswith(f"| {nested['cv_dice']:.4f} |")
