"""Issue #12 §4 (and §3 --keep-plans): plans.json and dataset.json validated completely when loaded.

Each refusal is a HiennuError (printed as one ``error:`` line by the CLI) naming the JSON path, the
bad value and what is allowed.
"""

from __future__ import annotations

import copy
import json

import pytest

from hiennu.errors import HiennuError
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.plans import (ENUMERATED_FIELDS, ChannelNormalization, Configuration, NetworkPlan, Plans,
                                   PlansError, configuration_problems, load_plans)
from helpers import make_varied_raw_dataset


def _plans_dict() -> dict:
    cfg = Configuration("3d_fullres", [64, 48, 16], "memory",
                        [ChannelNormalization("ADC", "global_zscore", 1400.0, 400.0, 100.0, 3000.0),
                         ChannelNormalization("ZADC", "atlas_zscore", clip_low=-10, clip_high=10)])
    return Plans("Dataset001_BONBID", ["ADC", "ZADC"], {"3d_fullres": cfg}).to_dict()


def _load(tmp_path, d: dict) -> Plans:
    (tmp_path / "plans.json").write_text(json.dumps(d))
    return load_plans(tmp_path)


def _edit(path: str, value) -> dict:
    d = copy.deepcopy(_plans_dict())
    node = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[keys[-1]] = value
    return d


CFG = "configurations.3d_fullres"


@pytest.mark.parametrize("path, value, expected", [
    (f"{CFG}.training.learning_rate", "1e-3", "expected a number"),
    (f"{CFG}.training.learning_rate", True, "expected a number"),
    (f"{CFG}.training.batch_size", 2.5, "expected a whole number"),
    (f"{CFG}.training.batch_size", "4", "expected a whole number"),
    (f"{CFG}.training.iterations_per_epoch", "many", "expected a whole number or null"),
    (f"{CFG}.network.deep_supervision", 1, "expected true or false"),
    (f"{CFG}.network.features_per_stage", 32, "expected a list of a whole number"),
    (f"{CFG}.target_size_xyz", [64, "48", 16], "expected a whole number"),
    (f"{CFG}.training", [], "must be an object"),
    (f"{CFG}.name", 3, "expected text"),
])
def test_wrong_types_name_the_json_path(tmp_path, path, value, expected):
    with pytest.raises(PlansError) as info:
        _load(tmp_path, _edit(path, value))
    message = str(info.value)
    shown = f"{path}[1]" if path.endswith("target_size_xyz") else path
    assert shown in message and expected in message and "plans.json" in message


@pytest.mark.parametrize("path, value, expected", [
    (f"{CFG}.augmentation.lowres_factor", [2.0], r"augmentation.lowres_factor \[2.0\] must be \[lowest, highest\] "
                                                 r"with 0 < lowest <= highest"),
    (f"{CFG}.augmentation.lowres_factor", [0, 2], r"lowres_factor \[0.0, 2.0\] must be .*0 < lowest"),
    (f"{CFG}.augmentation.blur_sigma", [0.5, 0.1], r"blur_sigma \[0.5, 0.1\] must be .*0 <= lowest <= highest"),
    (f"{CFG}.augmentation.log_gamma", [0.3, -0.3], r"log_gamma \[0.3, -0.3\] must be \[lowest, highest\]"),
    (f"{CFG}.augmentation.elastic_alpha", [-5, 200], r"elastic_alpha \[-5.0, 200.0\] must be .*0 <= lowest"),
    (f"{CFG}.augmentation.elastic_sigma", [10], r"elastic_sigma \[10.0\] must be .*0 < lowest"),
    (f"{CFG}.augmentation.noise_std", -1, r"augmentation.noise_std -1.0 must be >= 0"),
    (f"{CFG}.augmentation.mirror_axes", [3], r"mirror_axes \[3\] must be different axes among 0, 1, 2"),
    (f"{CFG}.augmentation.mirror_axes", [2, 2], r"mirror_axes \[2, 2\] must be different axes"),
    (f"{CFG}.network.dropout_per_stage", [0.0, 0.1, 0.2, 0.3, 1.5], r"dropout_per_stage .* must be probabilities"),
    (f"{CFG}.network.features_per_stage", [0, 64, 128, 256, 320], r"features_per_stage .* must be channel counts"),
    (f"{CFG}.network.rule_prior_channel", 5, r"network.rule_prior_channel 5 is not one of the 2 input channels"),
    (f"{CFG}.network.in_channels", 3, r"normalization has 2 entries but network.in_channels is 3"),
    (f"{CFG}.normalization.1.scheme", "zscore_image", r"network.rule_prior thresholds channel 1 \(ZADC\) at -2 in ZADC "
                                                      r"units, but normalization\[1\] is zscore_image"),
])
def test_values_read_only_while_training_are_checked_when_the_plans_load(tmp_path, path, value, expected):
    """Each of these loaded, then surfaced mid-training as an IndexError, a ZeroDivisionError or a ValueError."""
    d = _edit(path, value)
    if path.endswith(("rule_prior_channel", "normalization.1.scheme")):
        d["configurations"]["3d_fullres"]["network"]["rule_prior"] = True
    with pytest.raises(PlansError, match=expected):
        _load(tmp_path, d)


def test_ints_are_accepted_where_numbers_are_expected(tmp_path):
    plans = _load(tmp_path, _edit(f"{CFG}.training.learning_rate", 1))
    lr = plans.configuration().training.learning_rate
    assert lr == 1.0 and isinstance(lr, float)
    assert _load(tmp_path, _edit(f"{CFG}.training.batch_size", 2.0)).configuration().training.batch_size == 2


@pytest.mark.parametrize("field, where", [
    ("label_interpolation", CFG), ("prediction_interpolation", CFG), ("image_interpolation", CFG),
    ("optimizer", f"{CFG}.training"), ("early_stopping_metric", f"{CFG}.training"),
])
def test_every_enumerated_field_is_checked(tmp_path, field, where):
    with pytest.raises(PlansError) as info:
        _load(tmp_path, _edit(f"{where}.{field}", "bilinear-ish"))
    message = str(info.value)
    assert f"{where}.{field}" in message and "'bilinear-ish'" in message
    assert all(repr(v) in message for v in ENUMERATED_FIELDS[field])


def test_normalization_scheme_path_has_the_list_index(tmp_path):
    d = _plans_dict()
    d["configurations"]["3d_fullres"]["normalization"][1]["scheme"] = "magic"
    with pytest.raises(PlansError, match=r"normalization\[1\]\.scheme is 'magic'.*'zscore_image'"):
        _load(tmp_path, d)


@pytest.mark.parametrize("path, value, words", [
    (f"{CFG}.training.learning_rate", 0, "> 0"),
    (f"{CFG}.training.batch_size", 0, ">= 1"),
    (f"{CFG}.augmentation.p_noise", 1.5, "<= 1"),
    (f"{CFG}.network.rule_prior_scale", 0.0, "> 0"),
    (f"{CFG}.network.rule_prior_cap", -1.0, "> 0"),
])
def test_numeric_ranges(tmp_path, path, value, words):
    with pytest.raises(PlansError, match=rf"{path}.*{words}"):
        _load(tmp_path, _edit(path, value))


def test_missing_required_and_unknown_keys(tmp_path):
    d = _plans_dict()
    del d["configurations"]["3d_fullres"]["grid_policy"]
    with pytest.raises(PlansError, match=rf"{CFG}.grid_policy is missing"):
        _load(tmp_path, d)
    d = _edit(f"{CFG}.training.bacth_size", 2)
    with pytest.raises(PlansError, match=rf"{CFG}.training: unknown key\(s\) 'bacth_size'"):
        _load(tmp_path, d)


def test_grid_the_network_cannot_divide_is_refused_at_load(tmp_path):
    """--keep-plans preprocessing loads the plans here; the network has 3 pools of 2 (factor 8)."""
    with pytest.raises(PlansError) as info:
        _load(tmp_path, _edit(f"{CFG}.target_size_xyz", [64, 50, 16]))
    message = str(info.value)
    assert "target_size_xyz [64, 50, 16]" in message and "y 50 is not a multiple of 8" in message


def test_network_shape_problems_are_named():
    cfg = Configuration.__new__(Configuration)
    cfg.__dict__.update(Configuration("c", [16, 16, 16], "memory", []).__dict__)
    cfg.network = NetworkPlan(features_per_stage=[4, 8], pool_kernel_sizes=[[2, 2, 2]] * 2, dropout_per_stage=[0.0])
    problems = " ".join(configuration_problems(cfg))
    assert "pool_kernel_sizes has 2 entries" in problems and "dropout_per_stage has 1 entries" in problems


def test_keep_plans_refuses_an_indivisible_grid(hiennu_roots):
    """The integration path of the probe: edited plans + --keep-plans used to fail inside the network."""
    from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess

    make_varied_raw_dataset(hiennu_roots["hiennu_raw"], num_cases=5)
    out = plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1, preprocess=False))
    d = json.loads((out / "plans.json").read_text())
    d["configurations"]["3d_fullres"]["target_size_xyz"] = [16, 17, 16]
    (out / "plans.json").write_text(json.dumps(d))
    with pytest.raises(HiennuError, match=r"target_size_xyz \[16, 17, 16\].*not a multiple"):
        plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1, keep_plans=True))


# ------------------------------------------------------------------------------------ dataset.json

@pytest.mark.parametrize("value", ["eight", 8.5, True, -1, None])
def test_dataset_json_num_training_must_be_a_whole_number(tmp_path, value):
    d = DatasetJson(name="T", num_training=8).to_dict()
    d["numTraining"] = value
    (tmp_path / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(HiennuError, match=r"dataset.json: numTraining is .*whole number"):
        load_dataset_json(tmp_path)


def test_dataset_json_label_values_must_be_numbers(tmp_path):
    d = DatasetJson(name="T", num_training=8).to_dict()
    d["labels"] = {"background": 0, "lesion": "one"}
    (tmp_path / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(HiennuError, match="label values must be whole numbers"):
        load_dataset_json(tmp_path)


@pytest.mark.parametrize("key, value", [("labels", [0, 1]), ("labels", None), ("labels", "lesion"),
                                        ("channel_names", ["ADC", "ZADC"]), ("channel_names", None)])
def test_dataset_json_labels_and_channels_must_be_objects(tmp_path, key, value):
    d = DatasetJson(name="T", num_training=8).to_dict()
    d[key] = value
    (tmp_path / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(HiennuError, match=r"dataset.json: malformed .*it needs 'channel_names' as"):
        load_dataset_json(tmp_path)


def test_plans_errors_are_hiennu_errors():
    assert issubclass(PlansError, HiennuError)
