"""The "judged-rule" post-processing: the rule's mask (ZADC < -2 in the brain) in place of the model's, the ADC cap,
then a lesion filter whose fourth feature is the network's mean probability over each component.

Tested here: the fourth feature by hand and its refusals; a fit that only the network's probability can make; the
record's ``start_from_rule`` (applied, named, stored only when set, refused when not a bool); the candidate set
(one recipe against none, fitted on the rule's masks with the probabilities, no held-out fold leaking into its own
choice, an error naming cases without probabilities); the rule, which has no network to ask, refusing it; a tiny
model predicting with such a record case by case and folder by folder; and the choice read from a model's
``fold_K/validation/CASE.npz``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from hiennu.errors import HiennuError
from hiennu.masks import brain_mask, dice, rule_mask
from hiennu.postprocessing.candidates import needs_probabilities, rule_candidate_set
from hiennu.postprocessing.lesion_filter import (FEATURES, FEATURES_WITH_PROBABILITY, PROBABILITY_FEATURE,
                                                 ComponentFilter, FilterCase, component_features,
                                                 fit_component_filter)
from hiennu.postprocessing.record import POSTPROCESSING_FILE, PostProcessing, apply_postprocessing
from hiennu.postprocessing.selection import all_candidates, nested_choices, nested_estimate

from test_postprocessing_package import _as_dicts, _cases

# keeps a component when the network's mean probability over it is at least 0.5: p = sigmoid(20 m - 10)
ASK_THE_NETWORK = ComponentFilter(mean=(0.0, 0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0, 1.0), weights=(0.0, 0.0, 0.0, 20.0),
                                  bias=-10.0, threshold=0.5, features=FEATURES_WITH_PROBABILITY)


# ------------------------------------------------------------------------------------------ the fourth feature

def _three_components():
    mask = np.zeros((3, 8, 8), bool)
    mask[0, 0, 0:2] = True        # A: 2 voxels at a corner of the volume
    mask[1, 4, 3] = True          # B: 1 voxel deep inside
    mask[1:3, 6, 6] = True        # C: 2 voxels over two slices
    brain = np.ones(mask.shape, bool)
    brain[0, 7, 7] = False
    prob = (np.arange(mask.size, dtype=np.float32) / mask.size).reshape(mask.shape)  # (64 z + 8 y + x) / 192
    return mask, brain, prob


def test_mean_probability_is_the_fourth_feature_by_hand():
    mask, brain, prob = _three_components()
    spacing = (4.0, 0.5, 1.5)
    labels, with_p = component_features(mask, brain, spacing, FEATURES_WITH_PROBABILITY, prob)
    plain_labels, plain = component_features(mask, brain, spacing)
    assert FEATURES_WITH_PROBABILITY == FEATURES + (PROBABILITY_FEATURE,) and PROBABILITY_FEATURE == "mean_probability"
    assert with_p.shape == (3, 4) and np.array_equal(labels, plain_labels)
    assert with_p[:, :3] == pytest.approx(plain)
    mean_of = {name: with_p[labels[voxel] - 1, 3] for name, voxel in (("A", (0, 0, 0)), ("B", (1, 4, 3)),
                                                                      ("C", (1, 6, 6)))}
    assert mean_of["A"] == pytest.approx((0 + 1) / 2 / 192)
    assert mean_of["B"] == pytest.approx((64 + 32 + 3) / 192)
    assert mean_of["C"] == pytest.approx((64 + 48 + 6 + 128 + 48 + 6) / 2 / 192)
    empty = component_features(np.zeros_like(mask), brain, spacing, FEATURES_WITH_PROBABILITY, prob)[1]
    assert empty.shape == (0, 4)


def test_mean_probability_refuses_missing_misshapen_or_impossible_probabilities():
    mask, brain, prob = _three_components()
    spacing = (4.0, 0.5, 1.5)
    with pytest.raises(HiennuError, match="mean_probability needs the network's probabilities"):
        component_features(mask, brain, spacing, FEATURES_WITH_PROBABILITY)
    with pytest.raises(HiennuError, match=r"probabilities of shape \(3, 8, 7\) differ from the mask's \(3, 8, 8\)"):
        component_features(mask, brain, spacing, FEATURES_WITH_PROBABILITY, prob[:, :, :7])
    for bad in (1.5, np.nan, -0.1):
        broken = prob.copy()
        broken[2, 2, 2] = bad
        with pytest.raises(HiennuError, match=r"finite values in \[0, 1\]"):
            component_features(mask, brain, spacing, FEATURES_WITH_PROBABILITY, broken)


def test_the_three_mm_features_ignore_probabilities():
    mask, brain, prob = _three_components()
    plain = component_features(mask, brain, (4.0, 0.5, 1.5))[1]
    for given in (prob, prob[:2], np.full(mask.shape, 7.0)):  # not even checked
        assert np.array_equal(component_features(mask, brain, (4.0, 0.5, 1.5), FEATURES, given)[1], plain)


# ------------------------------------------------------------------------------------------ fitting with the network

def _lookalike_case(seed: int) -> FilterCase:
    """Four 2x2x2 blocks deep inside a brain box, alike in every mm feature: two are lesions (the network says about
    0.8 over them), two are false positives (about 0.25)."""
    rng = np.random.default_rng(seed)
    brain = np.zeros((10, 24, 24), bool)
    brain[1:9, 2:22, 2:22] = True
    ref = np.zeros_like(brain)
    mask = np.zeros_like(brain)
    prob = rng.uniform(0.0, 0.1, brain.shape).astype(np.float32)
    corners = [(3, 5), (3, 15), (6, 5), (6, 15)]
    order = rng.permutation(4)
    for k, j in enumerate(order):
        z, y = corners[j]
        x = int(rng.integers(5, 16))
        block = (slice(z, z + 2), slice(y, y + 2), slice(x, x + 2))
        mask[block] = True
        lesion = k < 2
        ref[block] = lesion
        prob[block] = rng.uniform(0.7, 0.95, (2, 2, 2)) if lesion else rng.uniform(0.1, 0.4, (2, 2, 2))
    return FilterCase(mask, brain, ref, (3.0, 1.0, 1.0), prob)


def _mean_dice(fitted: ComponentFilter, cases) -> float:
    return float(np.mean([dice(c.ref, fitted.apply(c.mask, c.brain, c.spacing_zyx, c.probabilities)) for c in cases]))


def test_only_the_network_tells_lookalike_components_apart():
    cases = [_lookalike_case(s) for s in range(4)]
    with_p = fit_component_filter(cases, features=FEATURES_WITH_PROBABILITY)
    shape_only = fit_component_filter(cases)
    assert with_p.features == FEATURES_WITH_PROBABILITY and with_p.needs_probabilities
    assert shape_only.features == FEATURES and not shape_only.needs_probabilities
    assert with_p.weights[3] > 0
    for case in cases + [_lookalike_case(11)]:   # a case it was not fitted on too
        assert np.array_equal(with_p.apply(case.mask, case.brain, case.spacing_zyx, case.probabilities),
                              case.ref.astype(np.uint8))
    # the shape features are all alike: the best the three can do is keep all (2 lesions of 4 blocks: Dice 2/3)
    assert _mean_dice(with_p, cases) == pytest.approx(1.0)
    assert _mean_dice(shape_only, cases) == pytest.approx(2 / 3)
    with pytest.raises(HiennuError, match="needs the network's probabilities"):
        with_p.apply(cases[0].mask, cases[0].brain, cases[0].spacing_zyx)
    with pytest.raises(HiennuError, match="needs the network's probabilities"):
        fit_component_filter([replace(c, probabilities=None) for c in cases], features=FEATURES_WITH_PROBABILITY)


def test_a_four_feature_filter_round_trips_and_needs_four_numbers_each():
    fitted = fit_component_filter([_lookalike_case(s) for s in range(3)], features=FEATURES_WITH_PROBABILITY)
    d = fitted.to_dict()
    assert d["features"] == list(FEATURES_WITH_PROBABILITY) and len(d["weights"]) == 4
    assert ComponentFilter.from_dict(json.loads(json.dumps(d)), "src") == fitted
    for key in ("weights", "mean", "scale"):
        with pytest.raises(HiennuError, match=f"src: component_filter {key} must be 4 finite numbers"):
            ComponentFilter.from_dict({**d, key: d[key][:3]}, "src")
    # a three-feature filter still needs three
    three = {**d, "features": list(FEATURES)}
    with pytest.raises(HiennuError, match="must be 3 finite numbers"):
        ComponentFilter.from_dict(three, "src")


# ------------------------------------------------------------------------------------------ the record

def _rule_images():
    """(zadc, adc) (2, 4, 5): brain where x > 0, ADC 1000 there except 1500 at (1, 2, 3); ZADC -3 on a few voxels."""
    shape = (2, 4, 5)
    adc = np.full(shape, 1000.0, np.float32)
    adc[:, :, 0] = 0.0
    adc[1, 2, 3] = 1500.0
    zadc = np.full(shape, -1.0, np.float32)
    for voxel in ((0, 1, 1), (0, 1, 2), (0, 3, 4), (1, 2, 3), (1, 0, 0), (1, 3, 1)):
        zadc[voxel] = -3.0
    zadc[0, 0, 4] = -2.0                                     # not below -2
    return zadc, adc


def test_start_from_rule_replaces_the_mask_by_the_capped_rule():
    zadc, adc = _rule_images()
    post = PostProcessing(max_adc=1200.0, start_from_rule=True)
    expected = np.zeros(zadc.shape, np.uint8)
    for voxel in ((0, 1, 1), (0, 1, 2), (0, 3, 4), (1, 3, 1)):  # (1, 0, 0) outside the brain, (1, 2, 3) capped
        expected[voxel] = 1
    for model_mask in (np.zeros(zadc.shape, np.uint8), np.ones(zadc.shape, np.uint8)):
        out = apply_postprocessing(model_mask, post, zadc, adc)
        assert out.dtype == np.uint8 and np.array_equal(out, expected)
    uncapped = apply_postprocessing(np.zeros(zadc.shape, np.uint8), PostProcessing(start_from_rule=True), zadc, adc)
    assert np.array_equal(uncapped, rule_mask(zadc, adc).astype(np.uint8)) and uncapped[1, 2, 3] == 1
    assert post.name == "ZADC<-2 components + ADC <= 1200"
    assert not post.is_identity and post.needs_zadc and post.needs_adc and post.needs_images
    assert not post.needs_probabilities
    assert not PostProcessing().needs_zadc and PostProcessing(keep_touching_rule=True).needs_zadc
    with pytest.raises(HiennuError, match="needs the case's ZADC image"):
        apply_postprocessing(np.zeros(zadc.shape, np.uint8), post, None, adc)
    with pytest.raises(HiennuError, match=r"ZADC shape \(2, 4, 4\) differs from the mask's \(2, 4, 5\)"):
        apply_postprocessing(np.zeros(zadc.shape, np.uint8), post, zadc[:, :, :4], adc)
    with pytest.raises(HiennuError, match="needs the case's ADC image"):
        apply_postprocessing(np.zeros(zadc.shape, np.uint8), post, zadc, None)


def test_start_from_rule_is_stored_only_when_set():
    default = PostProcessing()
    assert json.dumps(default.to_dict()) == ('{"min_component_voxels": 0, "keep_touching_rule": false, '
                                             '"rule_threshold": -2.0, "max_adc": null, "component_filter": null}')
    assert "start_from_rule" not in PostProcessing(max_adc=1300.0, component_filter=ASK_THE_NETWORK).to_dict()
    assert PostProcessing.from_dict(default.to_dict(), "src").start_from_rule is False
    judged = PostProcessing(max_adc=1392.0, component_filter=ASK_THE_NETWORK, start_from_rule=True)
    stored = json.loads(json.dumps(judged.to_dict()))
    assert stored["start_from_rule"] is True
    assert PostProcessing.from_dict(stored, "src") == judged
    for bad in ("yes", 1, None):
        with pytest.raises(HiennuError, match="src: start_from_rule must be true or false"):
            PostProcessing.from_dict({**stored, "start_from_rule": bad}, "src")


def test_a_record_that_asks_the_network_needs_its_probabilities():
    zadc, adc = _rule_images()
    post = PostProcessing(max_adc=1392.0, component_filter=ASK_THE_NETWORK, start_from_rule=True)
    assert post.needs_probabilities and post.component_filter.needs_probabilities
    assert post.name == "ZADC<-2 components + ADC <= 1392 + lesion filter asking the network"
    assert PostProcessing(component_filter=replace(ASK_THE_NETWORK, features=FEATURES, mean=(0.0,) * 3,
                                                   scale=(1.0,) * 3, weights=(0.0, 0.0, 1.0))).name == "lesion filter"
    empty = np.zeros(zadc.shape, np.uint8)
    with pytest.raises(HiennuError, match="needs the network's probabilities"):
        apply_postprocessing(empty, post, zadc, adc, (2.0, 1.0, 1.0))
    # the rule's components after the cap: {(0,1,1), (0,1,2)}, {(0,3,4)}, {(1,3,1)}; the network trusts the first two
    prob = np.full(zadc.shape, 0.2, np.float32)
    prob[0, 1, 1], prob[0, 1, 2] = 0.9, 0.3                 # mean 0.6: kept
    prob[0, 3, 4] = 0.55                                     # kept
    prob[1, 3, 1] = 0.45                                     # dropped
    expected = np.zeros(zadc.shape, np.uint8)
    expected[0, 1, 1] = expected[0, 1, 2] = expected[0, 3, 4] = 1
    assert np.array_equal(apply_postprocessing(empty, post, zadc, adc, (2.0, 1.0, 1.0), prob), expected)


# ------------------------------------------------------------------------------------------ the candidate set

def _judged_cases():
    """The synthetic cases of test_postprocessing_package with a network that says about 0.8 over the lesions and
    0.05-0.5 elsewhere."""
    cases, fold_of = _cases()
    rng = np.random.default_rng(21)
    out = {}
    for name, c in cases.items():
        prob = rng.uniform(0.05, 0.5, c.ref.shape)
        prob[c.ref] = rng.uniform(0.6, 0.95, int(c.ref.sum()))
        out[name] = replace(c, probabilities=prob.astype(np.float32))
    return out, fold_of


def test_judged_rule_is_one_recipe_fitted_on_the_rules_masks_with_the_probabilities():
    cases, _ = _judged_cases()
    ids = sorted(cases)
    options = all_candidates(cases, ids, min_component_voxels=3, candidate_set="judged-rule")
    assert len(options) == 2 and options[0].is_identity
    recipe = options[1]
    lesion_adc = np.concatenate([cases[c].adc[cases[c].ref] for c in ids])
    cap = float(np.round(np.quantile(lesion_adc, 0.995)))
    assert recipe.start_from_rule and recipe.max_adc == cap and recipe.min_component_voxels == 3
    assert not recipe.keep_touching_rule and recipe.needs_probabilities
    assert recipe.component_filter.features == FEATURES_WITH_PROBABILITY
    # exactly the filter fitted on the rule's masks, capped and without components under 3 voxels
    before = PostProcessing(min_component_voxels=3, max_adc=cap, start_from_rule=True)
    fit = [FilterCase(apply_postprocessing(cases[c].pred, before, cases[c].zadc, cases[c].adc), brain_mask(cases[c].adc),
                      cases[c].ref, cases[c].spacing_zyx, cases[c].probabilities) for c in ids]
    assert recipe.component_filter == fit_component_filter(fit, features=FEATURES_WITH_PROBABILITY)
    # the model's own masks play no part
    blind = {c: replace(cases[c], pred=np.zeros_like(cases[c].pred)) for c in ids}
    assert _as_dicts(all_candidates(blind, ids, min_component_voxels=3, candidate_set="judged-rule")) == _as_dicts(options)


def test_judged_rule_names_the_cases_without_probabilities():
    cases, _ = _judged_cases()
    cases["case04"] = replace(cases["case04"], probabilities=None)
    with pytest.raises(HiennuError, match=r"judged-rule need each case's network probabilities; case\(s\) case04 have "
                                          r"none; keep them with hiennu_train \.\.\. --npz"):
        all_candidates(cases, sorted(cases), candidate_set="judged-rule")
    others = sorted(c for c in cases if c != "case04")
    assert len(all_candidates(cases, others, candidate_set="judged-rule")) == 2   # only the cases of the choice count


def test_a_held_out_folds_probabilities_never_reach_its_own_judged_choice():
    cases, fold_of = _judged_cases()
    per_case, choices = nested_estimate(cases, fold_of, candidate_set="judged-rule")
    assert sorted(per_case) == sorted(cases) and all(0.0 <= v <= 1.0 for v in per_case.values())
    assert sorted(choices) == [0, 1, 2, 3, 4]
    before = nested_choices(cases, fold_of, candidate_set="judged-rule")
    assert all(len(f.options) == 2 and f.options[1].start_from_rule for f in before.values())
    changed = {c: replace(v, probabilities=(1.0 - v.probabilities)) if fold_of[c] == 2 else v for c, v in cases.items()}
    after = nested_choices(changed, fold_of, candidate_set="judged-rule")
    assert _as_dicts(after[2].options) == _as_dicts(before[2].options) and after[2].chosen == before[2].chosen
    # the change is one the other folds' choices (and the pooled fit) see
    assert any(_as_dicts(after[f].options) != _as_dicts(before[f].options) for f in (0, 1, 3, 4))
    assert _as_dicts(all_candidates(changed, sorted(cases), candidate_set="judged-rule")) != \
        _as_dicts(all_candidates(cases, sorted(cases), candidate_set="judged-rule"))


def test_which_sets_ask_the_network_and_what_the_rule_gets_instead():
    assert needs_probabilities("judged-rule") and not needs_probabilities("cap-filter")
    assert not needs_probabilities("all")
    assert rule_candidate_set("judged-rule") == "cap-filter"
    assert rule_candidate_set("cap-filter") == "cap-filter" and rule_candidate_set("all") == "all"
    for ask in (needs_probabilities, rule_candidate_set):
        with pytest.raises(HiennuError, match="post-processing candidates must be one of"):
            ask("some")


def test_the_rules_own_choice_refuses_judged_rule_before_reading_anything(hiennu_roots):
    from hiennu.postprocessing.commands import determine_rule_postprocessing
    with pytest.raises(HiennuError, match=r"the rule alone has none; choose the rule's post-processing with "
                                          r"--candidates cap-filter"):
        determine_rule_postprocessing("Dataset999_Nothing", {0: ["a"], 1: ["b"]}, candidate_set="judged-rule")
    with pytest.raises(HiennuError, match="no dataset.json"):   # any other set goes on to the (missing) dataset
        determine_rule_postprocessing("Dataset999_Nothing", {0: ["a"], 1: ["b"]}, candidate_set="cap-filter")
    assert not any(list(p.iterdir()) for p in hiennu_roots.values())


def test_the_rule_predictor_has_no_network_to_ask():
    from hiennu.inference.baseline import ZadcThresholdBaseline
    with pytest.raises(HiennuError, match="the ZADC rule has no network to ask"):
        ZadcThresholdBaseline(postprocessing=PostProcessing(max_adc=1392.0, component_filter=ASK_THE_NETWORK,
                                                            start_from_rule=True))
    fine = PostProcessing(max_adc=1392.0, start_from_rule=True)   # the same without the network is fine
    assert ZadcThresholdBaseline(postprocessing=fine).postprocessing == fine


# ------------------------------------------------------------------------------------------ a tiny model

def _stub_with_probabilities(predictor):
    """The helpers' stubbed network (its mask), with probabilities rising along x, returned only when asked."""
    from helpers import GEOM, network_mask
    prob = np.broadcast_to(np.linspace(0.0, 1.0, GEOM.size_zyx[2], dtype=np.float32), GEOM.size_zyx).copy()
    predictor.predict_prepared = lambda prepared, geometries, need: [
        (network_mask(), prob.copy() if need else None) for _ in prepared]
    return predictor


def test_a_model_with_a_judged_record_predicts_the_judged_rule(tmp_path):
    from helpers import GEOM, case_arrays, make_model_dir, network_mask
    from hiennu.inference.predictor import Predictor
    from hiennu.io.image import read_image, write_image

    model_dir = make_model_dir(tmp_path / "results")
    post = PostProcessing(max_adc=1500.0, component_filter=ASK_THE_NETWORK, start_from_rule=True)
    (model_dir / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": post.to_dict(), "chosen_name": post.name}))
    predictor = _stub_with_probabilities(Predictor.from_model_dir(model_dir, device="cpu", use_mirroring=False))
    assert predictor.postprocessing == post
    in_dir = tmp_path / "in"
    expected = {}
    for seed in (0, 1):
        adc, zadc = case_arrays(seed=seed)
        zadc = zadc / 2                    # ZADC ~ N(0, 1): the rule's components are a few voxels each
        images = [adc, zadc]
        mask, prob = predictor.predict_case(images, GEOM)
        assert prob is not None
        expected[f"case{seed}"] = apply_postprocessing(network_mask(), post, zadc, adc, GEOM.spacing_zyx, prob)
        assert np.array_equal(mask, expected[f"case{seed}"])
        capped_rule = apply_postprocessing(network_mask(), replace(post, component_filter=None), zadc, adc)
        assert 0 < mask.sum() < capped_rule.sum() and not np.array_equal(mask, network_mask())
        for k, image in enumerate(images):
            write_image(image, GEOM, in_dir / f"case{seed}_000{k}.mha")
    # the folder pipeline asks the network for its probabilities though none are saved
    report = predictor.predict_folder(in_dir, tmp_path / "out")
    assert report.ok and sorted(report.predicted) == sorted(expected)
    for case, mask in expected.items():
        assert np.array_equal(read_image(tmp_path / "out" / f"{case}.mha", dtype=np.uint8)[0], mask)
    assert not list((tmp_path / "out").glob("*.npz"))


def test_judged_rule_is_chosen_on_the_validation_probabilities_of_the_model(hiennu_roots):
    from helpers import tiny_model_with_validation_probabilities
    from hiennu.paths import ModelFolder
    from hiennu.postprocessing.selection import load_cases, select_postprocessing, validation_cases

    raw, model_dir = tiny_model_with_validation_probabilities(hiennu_roots)
    record = select_postprocessing(model_dir, raw, [0, 1], write=False, candidate_set="judged-rule")
    assert record["candidate_set"] == "judged-rule" and record["num_candidates"] == 2
    recipe = record["candidates"][1]
    assert recipe["start_from_rule"] is True and recipe["max_adc"] == 1100.0
    assert recipe["component_filter"]["features"] == list(FEATURES_WITH_PROBABILITY)
    assert set(record["nested"]["num_candidates"].values()) == {2}
    assert not ModelFolder(model_dir).postprocessing.exists()
    # the filter is fitted on the CASE.npz of each case's own fold
    model = ModelFolder(model_dir)
    masks, fold_of = validation_cases(model_dir, [0, 1], raw / "labelsTr", ".mha")
    cases = load_cases(masks, raw, fold_of, {c: [model.validation_probabilities(fold_of[c], c)] for c in masks})
    assert _as_dicts(all_candidates(cases, list(cases), candidate_set="judged-rule"))[1] == \
        {k: v for k, v in recipe.items() if k not in ("name", "cv_dice", "improvement")}
    missing = model.validation_probabilities(1, "case04")
    missing.unlink()
    with pytest.raises(HiennuError, match=rf"probabilities {missing} not found; keep them with hiennu_train \.\.\. "
                                          r"--npz"):
        select_postprocessing(model_dir, raw, [0, 1], write=False, candidate_set="judged-rule")
    # the other sets read no probabilities
    assert select_postprocessing(model_dir, raw, [0, 1], write=False, candidate_set="cap-filter")["num_candidates"] == 2


def test_applying_a_judged_record_to_masks_needs_and_reads_their_probabilities(tmp_path):
    """hiennu_apply_postprocessing with a record that asks the network: without --probabilities it is refused before
    anything is read; with them (CASE_prob.npz beside the masks, as hiennu_predict --save-probabilities npz writes
    them) each mask gets exactly apply_postprocessing with its case's probabilities; a case without them stops the
    run before anything is written."""
    from helpers import GEOM, case_arrays
    from hiennu.inference.folder_prediction import write_probabilities
    from hiennu.io.image import read_image, write_image
    from hiennu.postprocessing.commands import apply_to_folder
    record = tmp_path / POSTPROCESSING_FILE
    post = PostProcessing(component_filter=ASK_THE_NETWORK, start_from_rule=True)
    record.write_text(json.dumps({"chosen": post.to_dict()}))
    masks, images = tmp_path / "masks", tmp_path / "images"
    expected = {}
    for i in range(2):
        adc, zadc = case_arrays(GEOM, seed=i)
        for c, array in enumerate((adc, zadc)):
            write_image(array, GEOM, images / f"case{i}_{c:04d}.mha")
        write_image(np.zeros(GEOM.size_zyx, np.uint8), GEOM, masks / f"case{i}.mha")
        prob = np.random.default_rng(i).uniform(0.3, 0.7, GEOM.size_zyx).astype(np.float32)
        write_probabilities(prob, GEOM, masks / f"case{i}_prob.npz")
        expected[f"case{i}.mha"] = apply_postprocessing(np.zeros(GEOM.size_zyx, np.uint8), post, zadc, adc,
                                                        GEOM.spacing_zyx, prob)
    with pytest.raises(HiennuError, match=r"asks the network's probabilities.*--probabilities DIR"):
        apply_to_folder(masks, tmp_path / "out", record, images)
    assert not (tmp_path / "out").exists()
    assert apply_to_folder(masks, tmp_path / "out", record, images, masks) == ["case0", "case1"]
    rule = rule_mask(*case_arrays(GEOM, seed=0)[::-1])
    for name, want in expected.items():
        assert np.array_equal(read_image(tmp_path / "out" / name, dtype=np.uint8)[0], want)
    assert 0 < expected["case0.mha"].sum() < rule.sum()   # the judge keeps some of the rule's components
    (masks / "case1_prob.npz").unlink()
    with pytest.raises(HiennuError, match=r"case case1: no case1_prob.npz .*--save-probabilities npz"):
        apply_to_folder(masks, tmp_path / "out2", record, images, masks)
    assert not (tmp_path / "out2").exists()


def test_apply_postprocessing_refuses_a_mask_that_is_not_binary_instead_of_cutting_it(tmp_path):
    """A probability map given as the mask (0.9 where the lesion is) was read as uint8, cut to 0 and passed the
    0/1 check: an empty mask without a word. It is refused, showing its values, and nothing is written."""
    from helpers import GEOM
    from hiennu.io.image import write_image
    from hiennu.postprocessing.commands import apply_to_folder
    record = tmp_path / POSTPROCESSING_FILE
    record.write_text(json.dumps({"chosen": {"min_component_voxels": 2}}))
    mask = np.zeros(GEOM.size_zyx, np.float32)
    mask[1:3, 2:4, 2:4] = 0.9
    mask[0, 0, 0] = 1.0
    write_image(mask, GEOM, tmp_path / "masks" / "A.mha")
    with pytest.raises(HiennuError, match=r"case A: .*masks/A\.mha is not a binary mask \(values 0, 0\.9, 1\)"):
        apply_to_folder(tmp_path / "masks", tmp_path / "out", record)
    assert not (tmp_path / "out").exists()



@pytest.mark.parametrize("where", ["the masks", "inside the masks", "the images", "around the images",
                                   "the probabilities"])
def test_apply_postprocessing_writes_apart_from_every_input(tmp_path, where):
    """The output folder was refused only when it was -i itself: masks landed among a dataset's channels
    (--images), inside the masks' folder or over the masks beside saved probabilities."""
    from helpers import GEOM
    from hiennu.io.image import write_image
    from hiennu.postprocessing.commands import apply_to_folder
    record = tmp_path / POSTPROCESSING_FILE
    record.write_text(json.dumps({"chosen": {"min_component_voxels": 2}}))
    masks, images, probs = tmp_path / "masks", tmp_path / "data" / "imagesTr", tmp_path / "probs"
    write_image(np.zeros(GEOM.size_zyx, np.uint8), GEOM, masks / "A.mha")
    write_image(np.zeros(GEOM.size_zyx, np.float32), GEOM, images / "A_0000.mha")
    probs.mkdir()
    out = {"the masks": masks, "inside the masks": masks / "pp", "the images": images,
           "around the images": tmp_path / "data", "the probabilities": probs}[where]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(HiennuError, match="apart from every input"):
        apply_to_folder(masks, out, record, images, probs)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
