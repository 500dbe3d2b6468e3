"""The plans' ``inference_window``: nnU-Net's patch windows, or one window over a case that overhangs the patch.

Analytic window arithmetic (:mod:`hiennu.windows`), the plans field (default, refusal, 3D and 2D windows), the sliding
window with a case window (one pass, same values), the predictor (one forward pass per fold and mirroring for an
overhanging case, the rule reproduced in native geometry), the planner's choice, and the validation that records its
window and is stale under another.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.inference.predictor import Predictor
from hiennu.inference.sliding_window import sliding_window_predict
from hiennu.io.checkpoint import FINAL, stale_validation_problem
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry
from hiennu.networks.unet import build_network
from hiennu.paths import ModelFolder
from hiennu.plans import (AugmentationPlan, ChannelNormalization, Configuration, NetworkPlan, Plans, PlansError,
                          TrainingPlan, configuration_from_dict, model_inference_window, save_plans)
from hiennu.preprocessing.preprocessor import preprocess_case
from hiennu.windows import CASE_WINDOW_MAX_PATCHES, case_window, window_count


# --- the arithmetic --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, expected", [
    ((8, 16, 16), 1), ((5, 10, 3), 1),            # fits (a shorter axis is padded)
    ((9, 16, 16), 2), ((12, 16, 16), 2),          # one overhanging axis: two windows (step 4)
    ((13, 16, 16), 3), ((9, 17, 17), 8),          # three along z; two along each of three axes
])
def test_window_count_is_the_product_of_each_axis_windows(shape, expected):
    assert window_count(shape, (8, 16, 16)) == expected


@pytest.mark.parametrize("shape, multiple, expected", [
    ((8, 16, 16), (2, 2, 2), (8, 16, 16)),     # fits: the patch
    ((6, 10, 12), (2, 2, 2), (8, 16, 16)),     # smaller: the patch (padded)
    ((9, 16, 16), (4, 4, 4), (12, 16, 16)),    # 1.5 patches against 2 windows: the case
    ((9, 17, 17), (2, 2, 2), (10, 18, 18)),    # 1.58 patches against 8 windows
    ((12, 16, 16), (8, 8, 8), (8, 16, 16)),    # rounded up to 16 = 2 patches: not fewer than 2 windows
    ((15, 16, 16), (8, 8, 8), (16, 16, 16)),   # 2 patches against 3 windows, and at most 2 patches
    ((17, 16, 16), (1, 1, 1), (8, 16, 16)),    # 2.1 patches: over the memory bound, the patch windows
])
def test_case_window_only_when_cheaper_and_within_two_patches(shape, multiple, expected):
    assert case_window(shape, (8, 16, 16), multiple) == expected
    window = case_window(shape, (8, 16, 16), multiple)
    assert all(w % m == 0 for w, m in zip(window, multiple)) or window == (8, 16, 16)
    assert np.prod(window) <= CASE_WINDOW_MAX_PATCHES * 8 * 16 * 16


# --- the plans field -------------------------------------------------------------------------------

def _patch_config(window: str = "patch", spatial_dims: int = 3) -> Configuration:
    two_d = spatial_dims == 2
    return Configuration(
        name="2d" if two_d else "3d_fullres", target_size_xyz=None, grid_policy="spacing",
        normalization=[ChannelNormalization("ADC", "zscore_brain"), ChannelNormalization("ZADC", "atlas_zscore",
                                                                                          0, 1, -10, 10)],
        target_spacing_zyx=[2.0, 1.5, 1.5], crop_to_brain=True, patch_size_zyx=[1, 16, 16] if two_d else [8, 16, 16],
        planned_for="cpu",
        network=NetworkPlan(in_channels=2, features_per_stage=[4, 8],
                            pool_kernel_sizes=[[1, 2, 2]] if two_d else [[2, 2, 2]], dropout_per_stage=[0.0, 0.0],
                            norm="instance", rule_prior=True, spatial_dims=spatial_dims),
        training=TrainingPlan(batch_size=2, iterations_per_epoch=2, max_epochs=1, num_workers=0),
        augmentation=AugmentationPlan(p_mirror=0.5, mirror_axes=[2]), prediction_interpolation="nearest",
        image_interpolation="nearest", inference_window=window)


def test_plans_without_the_field_keep_nnunets_patch_windows_and_a_bad_value_names_it():
    d = dataclasses.asdict(_patch_config("case"))
    del d["inference_window"]
    config = configuration_from_dict(d, "plans.json")
    assert config.inference_window == "patch"
    assert config.inference_window_zyx((9, 17, 16)) == (8, 16, 16)
    with pytest.raises(PlansError, match=r"configuration.inference_window is 'whole' \(text\); allowed: 'patch', 'case'"):
        configuration_from_dict({**d, "inference_window": "whole"}, "plans.json")


def test_the_window_of_a_3d_and_a_2d_configuration():
    assert _patch_config("case").inference_window_zyx((9, 17, 16)) == (10, 18, 16)   # multiples of 2
    assert _patch_config("case").inference_window_zyx((8, 12, 16)) == (8, 16, 16)    # fits: the patch
    two_d = _patch_config("case", spatial_dims=2)
    assert two_d.inference_window_zyx((7, 17, 20)) == (7, 18, 20)   # every slice, in-plane the case
    assert _patch_config("patch", spatial_dims=2).inference_window_zyx((7, 17, 20)) == (7, 16, 16)
    whole = dataclasses.replace(_patch_config("case"), patch_size_zyx=None, target_size_xyz=[16, 16, 8])
    assert whole.inference_window_zyx((8, 16, 16)) == (8, 16, 16)  # a whole-volume grid has no sliding window


def test_a_case_window_is_one_pass_with_the_values_of_the_windows():
    data = torch.arange(2 * 9 * 17 * 16, dtype=torch.float32).reshape(2, 9, 17, 16)
    calls = []

    def predict(batch):
        calls.append(tuple(batch.shape))
        return batch[:, 0] - 2 * batch[:, 1]   # a voxel's value depends only on that voxel

    window = _patch_config("case").inference_window_zyx(data.shape[1:])
    whole = sliding_window_predict(predict, data, window)
    assert calls == [(1, 2, 10, 18, 16)]
    calls.clear()
    patches = sliding_window_predict(predict, data, (8, 16, 16))
    assert len(calls) == 4
    torch.testing.assert_close(whole, patches)
    torch.testing.assert_close(whole, data[0] - 2 * data[1])


# --- prediction -----------------------------------------------------------------------------------

def _case(shape=(9, 18, 17)):
    rng = np.random.default_rng(3)
    geometry = Geometry(tuple(reversed(shape)), (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    adc = np.full(shape, 1200, np.float32)
    zadc = rng.normal(-1.0, 1.5, shape).astype(np.float32)
    return adc, zadc, geometry


@pytest.mark.parametrize("window", ["patch", "case"])
def test_the_predictor_takes_an_overhanging_case_whole_and_keeps_the_rule(window):
    config = _patch_config(window)
    plans = Plans(dataset_name="Dataset001_X", channel_names=["ADC", "ZADC"], configurations={config.name: config})
    predictor = Predictor(plans, config, None, {"0": build_network(config.network).state_dict()}, device="cpu",
                          use_mirroring=False)
    adc, zadc, geometry = _case()
    data, _, _ = preprocess_case([adc, zadc], config, spacing_zyx=geometry.spacing_zyx)
    assert data.shape[1:] == (9, 18, 17)  # overhangs the 8 x 16 x 16 patch on every axis: 2 x 2 x 2 windows
    shapes = []
    forward = predictor.ensemble.predict_probabilities
    predictor.ensemble.predict_probabilities = lambda batch: shapes.append(tuple(batch.shape)) or forward(batch)
    mask, _ = predictor.predict_case([adc, zadc], geometry)
    if window == "patch":
        assert shapes == [(1, 2, 8, 16, 16)] * window_count((9, 18, 17), (8, 16, 16)) and len(shapes) == 8
    else:
        assert shapes == [(1, 2, 10, 18, 18)]   # 1.6 patches' voxels against 8 windows
    # an untrained rule-prior network is the rule ZADC < -2, whatever its windows
    np.testing.assert_array_equal(mask, ((zadc < -2) & (adc > 0)).astype(np.uint8))


# --- the planner ------------------------------------------------------------------------------------

def test_the_planner_writes_case_windows_for_its_patch_configurations():
    from test_2d_configuration import _fingerprint

    from hiennu.planning.planner import plan_experiment
    plans = plan_experiment(_fingerprint(), plan_for="cpu")
    for name in ("3d_fullres", "2d"):
        config = plans.configurations[name]
        assert config.inference_window == "case" and "inference_window case" in config.notes, name


# --- validations record their window ----------------------------------------------------------------

def _patch_model(results, window="patch"):
    model_dir = results / "Dataset001_Tiny" / "TrainerTest__hiennuPlans__3d_fullres"
    config = _patch_config(window)
    save_plans(Plans("Dataset001_Tiny", ["ADC", "ZADC"], {config.name: config}), model_dir / "plans.json")
    save_dataset_json(DatasetJson("Tiny"), model_dir / "dataset.json")
    torch.manual_seed(0)
    (model_dir / "fold_0").mkdir(parents=True)
    torch.save({"network_weights": build_network(config.network).state_dict(), "epoch": 3,
                "trainer_name": "TrainerTest", "configuration": dataclasses.asdict(config)},
               model_dir / "fold_0" / FINAL)
    return model_dir


def _set_window(model_dir, window):
    path = ModelFolder(model_dir).plans
    d = json.loads(path.read_text())
    d["configurations"]["3d_fullres"]["inference_window"] = window
    path.write_text(json.dumps(d))


def test_a_validation_of_another_window_is_stale_and_named(hiennu_roots):
    from helpers import make_varied_raw_dataset
    from hiennu.ensembling.cv_probabilities import _validated_cases
    from hiennu.postprocessing.commands import check_folds
    from hiennu.training.native_validation import (predict_and_score_validation, validation_is_current,
                                                    validation_problem)
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"], num_cases=3, name="Dataset001_Tiny")
    model_dir = _patch_model(hiennu_roots["hiennu_results"])
    model = ModelFolder(model_dir)
    cases = ["case00", "case01", "case02"]
    summary = predict_and_score_validation(model_dir, 0, cases, "Dataset001_Tiny", "cpu", save_probabilities=True)
    assert summary["inference_window"] == "patch" and model_inference_window(model_dir) == "patch"
    assert validation_is_current(model.fold_dir(0), FINAL, True)
    _set_window(model_dir, "case")   # an edit of the plans after the validation
    assert validation_problem(model.fold_dir(0), FINAL, True) == (
        "its validation masks were predicted with inference_window 'patch', the plans now say 'case'")
    with pytest.raises(HiennuError, match=r"fold 0: its validation masks were predicted with inference_window "
                                          r"'patch', the plans now say 'case'; re-validate it: hiennu_train .*--val"):
        _validated_cases(model_dir, 0, "Dataset001_Tiny")
    with pytest.raises(HiennuError, match=r"inference_window 'patch'.*re-validate it"):
        check_folds(model_dir, [0])
    summary = predict_and_score_validation(model_dir, 0, cases, "Dataset001_Tiny", "cpu", save_probabilities=True)
    assert summary["inference_window"] == "case" and validation_is_current(model.fold_dir(0), FINAL, True)
    _validated_cases(model_dir, 0, "Dataset001_Tiny")
    check_folds(model_dir, [0])


def test_a_summary_from_before_the_field_reads_as_patch_windows(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"checkpoint": FINAL}))
    assert stale_validation_problem(tmp_path, summary) is None
    assert stale_validation_problem(tmp_path, summary, "patch") is None
    assert "inference_window 'patch'" in stale_validation_problem(tmp_path, summary, "case")


def test_a_fold_trained_with_another_window_is_still_the_recipes_fold(tmp_path):
    """The final weights do not depend on the window: the default path reuses such a fold (and validates it again,
    above) instead of calling it trained otherwise; the predictor takes an edited window too."""
    from types import SimpleNamespace

    import hiennu
    from hiennu.plans import PREDICTOR_IGNORED_FIELDS
    from hiennu.training.fold_record import DEBUG_FILE, recorded_differences
    config = _patch_config("patch")
    (tmp_path / DEBUG_FILE).write_text(json.dumps({
        "trainer": "TrainerTest", "configuration": dataclasses.asdict(config),
        "effective_training_plan": dataclasses.asdict(config.training), "seed": 1,
        "hiennu_version": hiennu.__version__, "val_cases": ["case00"]}))

    def request(c):
        return SimpleNamespace(trainer_name="TrainerTest", training=c.training, options=SimpleNamespace(seed=1),
                               val_cases=["case00"], config=c)

    assert recorded_differences(tmp_path, request(config)) == []
    assert recorded_differences(tmp_path, request(_patch_config("case"))) == []
    other = dataclasses.replace(config, prediction_interpolation="linear")
    assert recorded_differences(tmp_path, request(other)) == [
        'configuration.prediction_interpolation: trained with "nearest", requested "linear"']
    assert "inference_window" in PREDICTOR_IGNORED_FIELDS


def test_the_benchmark_on_a_tiny_model(tmp_path, capsys):
    from helpers import load_benchmark

    from hiennu.io.image import write_image
    bench = load_benchmark("bench_inference_window")
    model = _patch_model(tmp_path / "results", "case")
    images = tmp_path / "images"
    for case_id, shape in (("case00", (9, 18, 17)), ("case01", (6, 12, 12))):
        adc, zadc, geometry = _case(shape)
        write_image(adc, geometry, images / f"{case_id}_0000.mha")
        write_image(zadc, geometry, images / f"{case_id}_0001.mha")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:  # the script sets the process's torch threads, which later tests' float sums depend on
        assert bench.main(["-m", str(model), "-i", str(images), "--rounds", "2", "--threads", "1",
                           "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert [(r["case"], r["shape_zyx"], r["patch_windows"], r["case_window_zyx"]) for r in result["windows"]] == [
        ("case00", [9, 18, 17], 8, [10, 18, 18]), ("case01", [6, 12, 12], 1, [8, 16, 16])]
    prediction = result["prediction"]
    assert all(len(prediction["s_per_case"][a]) == 2 for a in ("patch", "case", "hiennu"))
    # the group norm changes no mask; an untrained rule-prior network is the rule with either window
    assert prediction["mask_differences"] == {k: {"voxels": 0, "cases": 0}
                                              for k in ("patch_vs_case", "case_vs_hiennu", "patch_vs_hiennu")}
    assert "ratios patch/case" in capsys.readouterr().out


def test_find_best_keeps_an_existing_record_but_names_one_chosen_on_other_windows(tmp_path, monkeypatch):
    """hiennu_find_best_configuration never replaces a model's postprocessing.json (it may have been edited); one
    chosen on the masks of another window than the folds' validations now is kept with a warning that says so."""
    import logging

    import hiennu.ensembling.candidate_postprocessing as cp
    monkeypatch.setattr(cp, "postprocessing_from_record", lambda record, where: None)
    monkeypatch.setattr(cp, "_scores", lambda record, cases, fold_of, where: ({}, None, None))
    path = tmp_path / "postprocessing.json"
    new = {"chosen": {"max_adc": 1392.0}, "chosen_name": "ADC <= 1392", "folds": [0, 1],
           "validation_windows": {"0": "case", "1": "case"}}
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("hiennu").addHandler(handler)
    try:
        for existing, expected in (({"chosen": {"max_adc": 1400.0}, "chosen_name": "ADC <= 1400", "folds": [0, 1]},
                                    ["was chosen on validation masks of other sliding windows"]),
                                   ({**new, "chosen": {"max_adc": 1400.0}, "chosen_name": "ADC <= 1400"}, [])):
            warnings.clear()
            path.write_text(json.dumps(existing))
            outcome = cp.settle_postprocessing(new, path, {}, {}, keep_existing=True)
            assert outcome.action == cp.KEPT and outcome.record["chosen_name"] == "ADC <= 1400"
            assert [w for w in warnings if any(e in w for e in expected)] == warnings and len(warnings) == len(expected)
    finally:
        logging.getLogger("hiennu").removeHandler(handler)
