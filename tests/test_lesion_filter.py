"""The lesion filter: component features, the logistic fit, its record, and its place in the CV choice."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hiennu.errors import HiennuError
from hiennu.postprocessing.lesion_filter import (FEATURES, LEGACY_FEATURES, THRESHOLDS, ComponentFilter, FilterCase,
                                                 component_features, fit_component_filter)
from hiennu.postprocessing.record import POSTPROCESSING_FILE, PostProcessing, apply_postprocessing, load_postprocessing
from hiennu.postprocessing.selection import CaseImages, all_candidates, nested_estimate


def test_features_by_hand():
    mask = np.zeros((3, 8, 8), bool)
    brain = np.ones(mask.shape, bool)
    brain[0, 7, 7] = False
    mask[0, 0, 0:2] = True        # a corner of the volume: 34 shell voxels, 10 of them inside it
    mask[1, 4, 3] = True          # deep inside: its whole 26-voxel shell is brain
    mask[1:3, 6, 6] = True        # two slices at the far corner: 34 shell voxels, 25 inside, one of them not brain
    spacing = (4.0, 0.5, 1.5)     # a voxel is 3 mm³, a slice 4 mm thick
    labels, features = component_features(mask, brain, spacing)
    assert labels.max() == 3 and features.shape == (3, len(FEATURES))
    by_size = {int((labels == i + 1).sum()) * 10 + int(features[i, 1] / 4.0): features[i] for i in range(3)}
    corner, deep, column = by_size[21], by_size[11], by_size[22]
    assert corner == pytest.approx([np.log(2 * 3.0), 4.0, 24 / 34])
    assert deep == pytest.approx([np.log(3.0), 4.0, 0.0])
    assert column == pytest.approx([np.log(2 * 3.0), 8.0, 10 / 34])
    # a stored filter in voxels and slices needs no spacing
    legacy = component_features(mask, brain, features=LEGACY_FEATURES)[1]
    assert sorted(map(tuple, legacy.round(6))) == sorted(map(tuple, np.array(
        [[np.log(2), 1, 24 / 34], [0.0, 1, 0.0], [np.log(2), 2, 10 / 34]]).round(6)))
    assert component_features(np.zeros_like(mask), brain, spacing)[1].shape == (0, 3)
    with pytest.raises(HiennuError, match=r"mask shape \(3, 8, 8\) differs from the brain's \(3, 8\)"):
        component_features(mask, brain[:, :, 0], spacing)
    with pytest.raises(HiennuError, match=r"need the case's voxel spacing"):
        component_features(mask, brain)
    with pytest.raises(HiennuError, match=r"3 positive mm values"):
        component_features(mask, brain, (1.0, 0.0, 1.0))


def test_the_same_component_scores_alike_at_any_slice_thickness():
    """A 6 mm slab seen as one 6 mm slice or three 2 mm slices is one object: in mm its features agree."""
    brain = np.ones((6, 6, 6), bool)
    thick = np.zeros_like(brain)
    thick[2, 2:4, 2:4] = True
    thin = np.zeros_like(brain)
    thin[1:4, 2:4, 2:4] = True
    f_thick = component_features(thick, brain, (6.0, 1.0, 1.0))[1]
    f_thin = component_features(thin, brain, (2.0, 1.0, 1.0))[1]
    assert f_thick[0, :2] == pytest.approx(f_thin[0, :2])         # 24 mm³, 6 mm along z
    assert f_thick[0, :2] == pytest.approx([np.log(24.0), 6.0])


def _edge_speckle_case(seed: int) -> FilterCase:
    """Brain = a box inside the volume; lesions = 2x2x2 blocks deep inside; false positives = 2-voxel specks on the
    brain's rim. The predicted mask holds both; the reference only the lesions."""
    rng = np.random.default_rng(seed)
    brain = np.zeros((10, 24, 24), bool)
    brain[1:9, 2:22, 2:22] = True
    ref = np.zeros_like(brain)
    for z, y in ((3, 6), (5, 14)):
        x = int(rng.integers(6, 15))
        ref[z:z + 2, y:y + 2, x:x + 2] = True
    mask = ref.copy()
    for z, x in ((2, 4), (6, 10), (4, 16)):
        mask[z, 2, x:x + 2] = True        # the brain's first row: half its shell is outside
    return FilterCase(mask, brain, ref, (3.0, 1.0, 1.0))


def test_fit_keeps_deep_lesions_and_drops_rim_specks():
    cases = [_edge_speckle_case(s) for s in range(4)]
    fitted = fit_component_filter(cases)
    assert fitted is not None and fitted.threshold in THRESHOLDS
    assert fitted.weights[FEATURES.index("outside_shell")] < 0
    for case in cases + [_edge_speckle_case(9)]:
        assert np.array_equal(fitted.apply(case.mask, case.brain, case.spacing_zyx), case.ref.astype(np.uint8))
    # every component a lesion (or none a lesion): nothing to learn
    assert fit_component_filter([FilterCase(c.ref, c.brain, c.ref, c.spacing_zyx) for c in cases]) is None
    assert fit_component_filter([FilterCase(c.mask, c.brain, np.zeros_like(c.ref), c.spacing_zyx) for c in cases]) is None
    with pytest.raises(HiennuError, match="voxel spacing"):
        fit_component_filter([FilterCase(c.mask, c.brain, c.ref) for c in cases])


def test_probabilities_are_the_logistic_model():
    f = ComponentFilter(mean=(1.0, 2.0, 0.5), scale=(2.0, 1.0, 0.25), weights=(1.0, -1.0, 2.0), bias=0.5,
                        threshold=0.5)
    x = np.array([[3.0, 2.0, 0.5], [1.0, 4.0, 0.25]])
    logits = np.array([1.0 + 0.5, -2.0 - 2.0 + 0.5])
    assert f.probabilities(x) == pytest.approx(1 / (1 + np.exp(-logits)))
    assert f.keep(x).tolist() == [True, False] and f.keep(x, 0.9).tolist() == [False, False]


def test_probabilities_do_not_overflow_for_huge_logits():
    f = ComponentFilter(mean=(0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0), weights=(1.0, 0.0, 0.0), bias=0.0, threshold=0.5)
    with np.errstate(over="raise"):       # np.exp(-(-1000)) would overflow and raise here
        p = f.probabilities(np.array([[-1000.0, 0, 0], [1000.0, 0, 0]]))
    assert p.tolist() == [0.0, 1.0]


def test_a_fit_that_does_not_converge_is_reported(caplog, monkeypatch):
    import logging
    monkeypatch.setattr(logging.getLogger("hiennu"), "propagate", True)  # a CLI test may have turned it off
    cases = [_edge_speckle_case(s) for s in range(4)]
    with caplog.at_level("WARNING", logger="hiennu"):
        fitted = fit_component_filter(cases, max_iterations=1)
    assert fitted is not None
    assert any("did not converge after 1 iterations" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="hiennu"):
        fit_component_filter(cases)
    assert not any("did not converge" in r.getMessage() for r in caplog.records)


def test_record_round_trip_and_refusals(tmp_path):
    fitted = fit_component_filter([_edge_speckle_case(s) for s in range(3)])
    post = PostProcessing(max_adc=1392.0, component_filter=fitted)
    assert post.name == "ADC <= 1392 + lesion filter" and post.needs_images and not post.is_identity
    (tmp_path / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": post.to_dict()}))
    assert load_postprocessing(tmp_path) == post
    assert post.to_dict()["component_filter"]["features"] == list(FEATURES)
    legacy = PostProcessing(component_filter=dataclasses.replace(fitted, features=LEGACY_FEATURES))
    (tmp_path / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": legacy.to_dict()}))
    assert load_postprocessing(tmp_path).component_filter.features == LEGACY_FEATURES  # older records still load
    good = fitted.to_dict()
    for key, bad, message in (("features", ["size"], "features"), ("threshold", 1.5, "threshold must be"),
                              ("weights", [1.0, float("nan"), 0.0], "weights must be 3 finite"),
                              ("scale", [1.0, 0.0, 1.0], "scale must be positive"), ("bias", "x", "bias must")):
        record = {"chosen": {**post.to_dict(), "component_filter": {**good, key: bad}}}
        (tmp_path / POSTPROCESSING_FILE).write_text(json.dumps(record))
        with pytest.raises(HiennuError, match=message):
            load_postprocessing(tmp_path)


def test_postprocessing_applies_the_filter_after_the_cap_and_needs_the_adc():
    case = _edge_speckle_case(0)
    fitted = fit_component_filter([_edge_speckle_case(s) for s in range(4)])
    adc = np.where(case.brain, 1000.0, 0.0).astype(np.float32)
    post = PostProcessing(component_filter=fitted)
    assert np.array_equal(apply_postprocessing(case.mask.astype(np.uint8), post, adc=adc,
                                               spacing_zyx=case.spacing_zyx), case.ref)
    with pytest.raises(HiennuError, match="needs the case's ADC image"):
        apply_postprocessing(case.mask.astype(np.uint8), post, spacing_zyx=case.spacing_zyx)
    with pytest.raises(HiennuError, match="voxel spacing"):
        apply_postprocessing(case.mask.astype(np.uint8), post, adc=adc)


def _case_images(seed: int) -> CaseImages:
    c = _edge_speckle_case(seed)
    adc = np.where(c.brain, 1000.0, 0.0).astype(np.float32)
    return CaseImages(c.mask.astype(np.uint8), c.ref, np.zeros(c.ref.shape, np.float32), adc, c.spacing_zyx)


def test_the_nested_choice_fits_the_filter_without_the_held_out_fold():
    cases = {f"c{i}": _case_images(i) for i in range(6)}
    fold_of = {f"c{i}": i % 3 for i in range(6)}
    options = all_candidates(cases, list(cases), sizes=(5,))
    assert [p.name for p in options if p.component_filter is not None][0] == "lesion filter"
    per_case, choices = nested_estimate(cases, fold_of, sizes=(5,))
    # rim specks (2 voxels) and lesions (8) would also part by size 5; the filter ties with it and the simpler
    # rule wins ties, so break the tie: make the specks 9 voxels, too big for any size rule
    assert all(v == pytest.approx(1.0) for v in per_case.values())
    big = {}
    for name, c in cases.items():
        pred = c.pred.copy()
        pred[:, 2, :][pred[:, 2, :] > 0] = 0
        for z, x in ((2, 4), (6, 12)):
            pred[z:z + 3, 2, x:x + 3] = 1
        big[name] = CaseImages(pred, c.ref, c.zadc, c.adc, c.spacing_zyx)
    per_case, choices = nested_estimate(big, fold_of, sizes=(5,))
    assert all(p.component_filter is not None for p in choices.values())
    assert all(v == pytest.approx(1.0) for v in per_case.values())
    # what fold 0's cases hold cannot change fold 0's own choice (fitted on folds 1 and 2), only the others'
    blind = {n: (CaseImages(c.pred, np.zeros_like(c.ref), c.zadc, c.adc, c.spacing_zyx) if fold_of[n] == 0 else c)
             for n, c in big.items()}
    _, blind_choices = nested_estimate(blind, fold_of, sizes=(5,))
    assert blind_choices[0] == choices[0]
    assert any(blind_choices[f] != choices[f] for f in (1, 2))


def test_predictor_applies_a_stored_filter_in_case_and_zip_prediction(tmp_path):
    from helpers import GEOM, case_arrays, make_model_dir, network_mask, stub_network

    from hiennu.inference.model_zip import export_model_zip
    from hiennu.inference.predictor import Predictor

    model_dir = make_model_dir(tmp_path / "results")
    images = case_arrays()                       # ADC is 0 (outside the brain) at y < 2
    # drops whatever touches the outside: p = sigmoid(2 - 20 * outside_shell); a filter stored in voxels
    # (LEGACY_FEATURES): the predictor does not hand the case's spacing to the post-processing yet
    rim_filter = ComponentFilter(mean=(0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0), weights=(0.0, 0.0, -20.0), bias=2.0,
                                 threshold=0.5, features=LEGACY_FEATURES)
    post = PostProcessing(component_filter=rim_filter)
    (model_dir / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": post.to_dict(), "chosen_name": post.name}))
    expected = np.zeros_like(network_mask())
    expected[2:4, 9:12, 5:9] = 1                 # the deep blob; the blob at y = 2 and the voxel on the last slice go
    predictor = stub_network(Predictor.from_model_dir(model_dir, device="cpu", use_mirroring=False))
    assert predictor.postprocessing == post
    assert np.array_equal(predictor.predict_case(images, GEOM)[0], expected)
    from_zip = stub_network(Predictor.from_zip(export_model_zip(model_dir, tmp_path / "m.zip"), device="cpu",
                                               use_mirroring=False))
    assert from_zip.postprocessing == post
    assert np.array_equal(from_zip.predict_case(images, GEOM)[0], expected)


def test_the_filter_is_fitted_on_what_the_size_rule_leaves(monkeypatch):
    """With the plans' size rule k, the predictor removes components under k before the filter; the filter
    candidates are fitted on those masks and carry k, so fit time and apply time see the same components."""
    from hiennu.postprocessing.selection import filter_candidates

    cases = {f"c{i}": _case_images(i) for i in range(4)}
    seen = []

    def spy(fit_cases, *args, **kwargs):
        seen.append([int(c.mask.sum()) for c in fit_cases])
        return fit_component_filter(fit_cases, *args, **kwargs)

    monkeypatch.setattr("hiennu.postprocessing.selection.fit_component_filter", spy)
    plain = filter_candidates(cases, list(cases), caps=[])
    sized = filter_candidates(cases, list(cases), caps=[], min_component_voxels=3)
    # each case: two 8-voxel lesions and three 2-voxel rim specks; the size rule 3 leaves only the lesions
    assert seen[0] == [22] * 4 and seen[1] == [16] * 4
    assert plain[0].min_component_voxels == 0 and sized == []  # after the size rule only lesions: nothing to fit
