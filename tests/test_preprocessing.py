"""Normalization, preprocess_case and the whole plan-and-preprocess step on a tiny raw dataset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hiennu.cli.plan_and_preprocess import main as cli_main
from hiennu.errors import DataIntegrityError, HiennuError
from hiennu.io.image import Geometry, write_image
from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from hiennu.plans import ChannelNormalization, Configuration, load_plans, save_plans
from hiennu.preprocessing.normalization import normalize_channel
from hiennu.preprocessing.preprocessor import preprocess_case
from helpers import make_varied_raw_dataset

PROPERTY_KEYS = {"case_id", "geometry", "image_files", "label_file", "brain_voxels", "lesion_voxels",
                 "lesion_fraction", "has_lesion", "source_signature"}


# --- normalization --------------------------------------------------------------------------------

def test_normalization_schemes_by_hand():
    x = np.array([[[0.0, 2.0, 4.0, 6.0]]], np.float32)
    brain = x > 0
    out = normalize_channel(x, brain, ChannelNormalization("A", "zscore_image"))
    np.testing.assert_allclose(out, (x - 3.0) / np.sqrt(5.0), rtol=1e-6)
    out = normalize_channel(x, brain, ChannelNormalization("A", "zscore_brain"))
    np.testing.assert_allclose(out, [[[0.0, -np.sqrt(1.5), 0.0, np.sqrt(1.5)]]], rtol=1e-6)
    out = normalize_channel(x, brain, ChannelNormalization("A", "global_zscore", 3.0, 2.0, 2.5, 5.0))
    np.testing.assert_allclose(out, [[[0.0, -0.25, 0.5, 1.0]]], rtol=1e-6)
    z = np.array([[[0.0, -12.0, -2.0, 11.0]]], np.float32)
    out = normalize_channel(z, brain, ChannelNormalization("Z", "atlas_zscore", 0.0, 1.0, -10.0, 10.0))
    np.testing.assert_allclose(out, [[[0.0, -10.0, -2.0, 10.0]]])
    np.testing.assert_array_equal(normalize_channel(x, None, ChannelNormalization("A", "none")), x)


def test_constant_image_does_not_divide_by_zero():
    out = normalize_channel(np.ones((2, 2, 2)), None, ChannelNormalization("A", "zscore_image"))
    assert np.isfinite(out).all() and (out == 0).all()


# --- preprocess_case -----------------------------------------------------------------------------

def _config(size_xyz, schemes=("none", "none"), label_interpolation="nearest") -> Configuration:
    return Configuration("3d_fullres", list(size_xyz), "forced",
                         [ChannelNormalization(f"c{i}", s) for i, s in enumerate(schemes)],
                         label_interpolation=label_interpolation)


def test_preprocess_case_shapes_types_and_identity():
    rng = np.random.default_rng(0)
    adc = rng.uniform(1, 2, (4, 6, 8)).astype(np.float32)
    zadc = rng.normal(size=(4, 6, 8)).astype(np.float32)
    label = (rng.random((4, 6, 8)) > 0.7).astype(np.uint8)
    data, seg, crop = preprocess_case([adc, zadc], _config((8, 6, 4)), label)
    assert crop is None
    assert data.dtype == np.float32 and data.shape == (2, 4, 6, 8)
    np.testing.assert_allclose(data[0], adc, rtol=1e-6)
    np.testing.assert_array_equal(seg[0], label)
    assert seg.dtype == np.uint8
    data, seg, _ = preprocess_case([adc, zadc], _config((16, 12, 16)))
    assert data.shape == (2, 16, 12, 16) and seg is None


def test_preprocess_case_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="normalizes 2"):
        preprocess_case([np.zeros((2, 2, 2))], _config((2, 2, 2)))
    with pytest.raises(ValueError, match="one shape"):
        preprocess_case([np.zeros((2, 2, 2)), np.zeros((2, 2, 3))], _config((2, 2, 2)))


# --- the whole step ------------------------------------------------------------------------------

def test_plan_and_preprocess_writes_everything_and_skips_up_to_date_cases(hiennu_roots):
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"])
    out = plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1))
    for name in ("dataset.json", "dataset_fingerprint.json", "plans.json", "splits_final.json"):
        assert (out / name).is_file(), name
    plans = load_plans(out)
    full = plans.configuration("3d_lossless")
    assert full.target_size_xyz == [16, 32, 16] and full.roundtrip_dice_mean == 1.0
    patch = plans.configuration("3d_fullres")
    assert patch.is_patch_based and patch.roundtrip_dice_mean is not None
    props = json.loads((out / "3d_fullres" / "case01.json").read_text())
    assert set(props) == PROPERTY_KEYS | {"crop", "lesion_locations"} and props["lesion_locations"]
    data = np.load(out / "3d_fullres" / "case01.npy")
    assert data.shape[1:] == tuple(props["crop"]["resampled_size_zyx"])
    paper = plans.configuration("3d_paper")
    assert paper.roundtrip_dice_mean is not None
    for cfg in (full, paper):
        data = np.load(out / cfg.name / "case01.npy", mmap_mode="r")
        seg = np.load(out / cfg.name / "case01_seg.npy")
        assert data.dtype == np.float32 and data.shape == (2, *cfg.target_size_zyx)
        assert seg.dtype == np.uint8 and seg.shape == (1, *cfg.target_size_zyx) and seg.max() == 1
        props = json.loads((out / cfg.name / "case01.json").read_text())
        assert set(props) == PROPERTY_KEYS and props["has_lesion"] and props["geometry"]["size_xyz"] == [13, 16, 7]
    assert len(json.loads((out / "splits_final.json").read_text())) == 5
    mtime = (out / "3d_lossless" / "case00.npy").stat().st_mtime_ns
    plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1, configurations=["3d_lossless"]))
    assert (out / "3d_lossless" / "case00.npy").stat().st_mtime_ns == mtime


def test_editing_plans_changes_preprocessing(hiennu_roots):
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"], num_cases=5)
    out = plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1,
                                                               configurations=["3d_lossless", "3d_fullres"]))
    before = np.load(out / "3d_lossless" / "case01.npy")
    before_patch = np.load(out / "3d_fullres" / "case01.npy")
    plans = load_plans(out)
    cfg = plans.configuration("3d_lossless")
    cfg.target_size_xyz = [16, 16, 16]
    cfg.normalization[0] = ChannelNormalization("ADC", "none")
    patch = plans.configuration("3d_fullres")
    patch.target_spacing_zyx = [s * 2 for s in patch.target_spacing_zyx]
    save_plans(plans, out)
    plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1, configurations=["3d_lossless", "3d_fullres"],
                                                         keep_plans=True))
    after = np.load(out / "3d_lossless" / "case01.npy")
    assert before.shape == (2, 16, 32, 16) and after.shape == (2, 16, 16, 16)
    assert after[0].max() > 500  # raw ADC units, no longer normalized
    assert load_plans(out).configuration("3d_lossless").target_size_xyz == [16, 16, 16]
    after_patch = np.load(out / "3d_fullres" / "case01.npy")
    assert all(abs(2 * a - b) <= 1 for a, b in zip(after_patch.shape[1:], before_patch.shape[1:]))
    # planning anew (what a user pastes without --keep-plans) keeps the edited file as plans.json.bak and says so
    assert not (out / "plans.json.bak").exists()
    edited = (out / "plans.json").read_text()
    records = _warnings_of(lambda: plan_and_preprocess("TINY", PlanAndPreprocessOptions(
        num_processes=1, configurations=["3d_lossless"], preprocess=False)))
    assert (out / "plans.json.bak").read_text() == edited
    assert load_plans(out).configuration("3d_lossless").target_size_xyz == [16, 32, 16]
    assert any("planned anew, replacing the file there (its previous content is kept in plans.json.bak)" in r
               for r in records), records
    (out / "plans.json.bak").unlink()
    assert not _warnings_of(lambda: plan_and_preprocess("TINY", PlanAndPreprocessOptions(
        num_processes=1, configurations=["3d_lossless"], preprocess=False)))  # the same plans: nothing to keep
    assert not (out / "plans.json.bak").exists()


def _warnings_of(call) -> list[str]:
    """The package's warnings logged while ``call()`` runs."""
    import logging
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("hiennu").addHandler(handler)  # the package logger stops propagating once a command ran
    try:
        call()
    finally:
        logging.getLogger("hiennu").removeHandler(handler)
    return records


def test_parallel_run_matches_serial_run(hiennu_roots, tmp_path):
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"], num_cases=5)
    out = plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1, configurations=["3d_paper"]))
    serial = np.load(out / "3d_paper" / "case03.npy")
    (out / "3d_paper" / "case03.json").unlink()
    plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=2, configurations=["3d_paper"]))
    np.testing.assert_array_equal(np.load(out / "3d_paper" / "case03.npy"), serial)


def test_integrity_failure_writes_nothing(hiennu_roots):
    folder = make_varied_raw_dataset(hiennu_roots["hiennu_raw"])
    bad = folder / "labelsTr" / "case02.mha"
    geo = Geometry((14, 18, 8), (1.2, 1.1, 5.0), (2.0, -2.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(np.full((8, 18, 14), 2, np.uint8), geo, bad)
    with pytest.raises(DataIntegrityError, match="case02"):
        plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1))
    assert list(hiennu_roots["hiennu_preprocessed"].iterdir()) == []


def test_cli_check_only_and_errors(hiennu_roots, capsys):
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"])
    assert cli_main(["-d", "9", "--check-only", "-q"]) == 0
    assert list(hiennu_roots["hiennu_preprocessed"].iterdir()) == []
    assert cli_main(["-d", "NOPE", "-q"]) == 1
    assert "unknown dataset" in capsys.readouterr().err
    assert cli_main(["-d", "TINY", "-c", "3d_lowres", "-q"]) == 1
    assert "unknown configuration" in capsys.readouterr().err
    assert cli_main(["-d", "TINY", "--target-size", "30", "32", "16", "-np", "1", "-q"]) == 1
    assert "multiple" in capsys.readouterr().err
    assert cli_main(["-d", "TINY", "--target-size", "16", "16", "16", "-np", "1", "-q", "--no-preprocess"]) == 0
    out = hiennu_roots["hiennu_preprocessed"] / "Dataset009_TINY"
    assert load_plans(out).configuration("3d_paper").target_size_xyz == [16, 16, 16]
    assert not (out / "3d_fullres").exists()


def test_a_case_keeps_the_adc_files_geometry_whatever_the_channel_order(tmp_path):
    from hiennu.io.cases import CaseFiles
    from hiennu.preprocessing.preprocessor import preprocess_case_files
    adc_geometry = Geometry((8, 6, 4), (1.5, 1.5, 3.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    near = Geometry((8, 6, 4), (1.50001, 1.5, 3.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(np.full((4, 6, 8), -3, np.float32), near, tmp_path / "a_0000.mha")  # ZADC first, within tolerance
    write_image(np.full((4, 6, 8), 1000, np.float32), adc_geometry, tmp_path / "a_0001.mha")
    config = Configuration("3d_fullres", [8, 6, 4], "forced",
                           [ChannelNormalization("ZADC", "none"), ChannelNormalization("ADC", "none")])
    case = CaseFiles("a", [tmp_path / "a_0000.mha", tmp_path / "a_0001.mha"])
    assert preprocess_case_files(case, config, tmp_path / "out")
    props = json.loads((tmp_path / "out" / "a.json").read_text())
    assert props["geometry"]["spacing_xyz"] == [1.5, 1.5, 3.0] and props["brain_voxels"] == 192


def test_swapped_channel_names_are_refused_before_anything_is_written(hiennu_roots):
    folder = make_varied_raw_dataset(hiennu_roots["hiennu_raw"])
    dj = json.loads((folder / "dataset.json").read_text())
    dj["channel_names"] = {"0": "ZADC", "1": "ADC"}
    (folder / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(HiennuError, match=r"channel 1 \(ADC\) is -?0\.\d+ and .*channel 0 \(ZADC\) is 1[34]\d\d.*look "
                                          r"swapped; fix channel_names in dataset.json"):
        plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1))
    assert list(hiennu_roots["hiennu_preprocessed"].iterdir()) == []


@pytest.mark.parametrize("scale, words", [(1e-6, "in 10\\^-6 mm\\^2/s .*multiply a map in mm\\^2/s by 10\\^6"),
                                          (None, "channel 1 \\(ZADC\\) is 1[34]\\d\\d, beyond \\+-5: a ZADC map is a z-score")])
def test_a_channel_whose_values_contradict_its_name_is_named(hiennu_roots, scale, words):
    from hiennu.io.image import read_image
    folder = make_varied_raw_dataset(hiennu_roots["hiennu_raw"])
    for f in sorted((folder / "imagesTr").glob("*_000?.mha")):
        adc_file = f.name.endswith("_0000.mha")
        if scale is not None and adc_file:  # the ADC in mm^2/s
            array, geometry = read_image(f)
            write_image(array * scale, geometry, f)
        elif scale is None and not adc_file:  # the ZADC file holding an ADC map
            array, geometry = read_image(f.with_name(f.name.replace("_0001", "_0000")))
            write_image(array, geometry, f)
    with pytest.raises(HiennuError, match=words):
        plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1))
    assert list(hiennu_roots["hiennu_preprocessed"].iterdir()) == []


def test_too_few_cases_for_five_folds_are_refused_before_anything_is_written(hiennu_roots):
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"], num_cases=4)
    with pytest.raises(HiennuError, match="4 training case\\(s\\) cannot be split into 5 folds; add cases"):
        plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1))
    assert list(hiennu_roots["hiennu_preprocessed"].iterdir()) == []


def test_training_refuses_cases_preprocessed_under_other_plans(hiennu_roots):
    """An interrupted --keep-plans re-preprocessing after an edit leaves cases of both plans; training on the mix
    went ahead without a word (only CASE.npy was checked)."""
    from hiennu.training.fold_layout import fold_layout
    from hiennu.training.options import TrainingOptions
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"])
    out = plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1, configurations=["3d_fullres"]))
    options = TrainingOptions(dataset="TINY", fold=0, configuration="3d_fullres")
    fold_layout("TrainerDice", options).check_preprocessed_cases()
    plans = load_plans(out)
    plans.configuration("3d_fullres").normalization[0].mean += 100.0  # the plans edited ...
    save_plans(plans, out / "plans.json")
    with pytest.raises(HiennuError, match=r"5 of 5 case\(s\) .* were preprocessed under other plans than "
                                          r"hiennuPlans's 3d_fullres .*; preprocess them with the plans as they are: "
                                          r"hiennu_plan_and_preprocess -d Dataset\d+_TINY -c 3d_fullres --keep-plans "
                                          r"\(without --keep-plans it plans anew"):
        fold_layout("TrainerDice", options).check_preprocessed_cases()
    from hiennu.training.trainers import TrainerDice  # ... which only a run that trains needs
    validating = TrainingOptions(dataset="TINY", fold=0, configuration="3d_fullres", validation_only=True,
                                 final_validation=True)
    assert not fold_layout("TrainerDice", validating).trains
    TrainerDice(validating)  # built: --val predicts from the raw images with the fold's own plans
    with pytest.raises(HiennuError, match="were preprocessed under other plans"):
        TrainerDice(options)
    plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1, configurations=["3d_fullres"],
                                                         keep_plans=True))  # ... and every case preprocessed again
    fold_layout("TrainerDice", options).check_preprocessed_cases()
    (out / "3d_fullres" / "case01.json").unlink()  # arrays without their record: interrupted
    with pytest.raises(HiennuError, match="preprocessed files missing for case\\(s\\) case01"):
        fold_layout("TrainerDice", options).check_preprocessed_cases()


def _flat_dataset(raw_root, size_zyx, name="Dataset012_FLAT", cases=5, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                  spacing_xyz=(1.0, 1.0, 5.0)):
    """A raw dataset of ``cases`` cases of one size (ADC ~1300, ZADC z-scores, a lesion in the middle)."""
    from hiennu.io.dataset_json import DatasetJson, save_dataset_json
    folder = raw_root / name
    geometry = Geometry(tuple(reversed(size_zyx)), spacing_xyz, (0.0, 0.0, 0.0), direction)
    rng = np.random.default_rng(0)
    for i in range(cases):
        adc = rng.normal(1300, 50, size_zyx).astype(np.float32)
        label = np.zeros(size_zyx, np.uint8)
        label[..., size_zyx[1] // 2, size_zyx[2] // 2] = 1
        adc[label > 0] = 700
        write_image(adc, geometry, folder / "imagesTr" / f"c{i}_0000.mha")
        write_image(((adc - 1300) / 170).astype(np.float32), geometry, folder / "imagesTr" / f"c{i}_0001.mha")
        write_image(label, geometry, folder / "labelsTr" / f"c{i}.mha")
    save_dataset_json(DatasetJson(name="FLAT", num_training=cases), folder)
    return folder


def test_single_slice_cases_plan_no_3d_configuration_and_the_plans_load(hiennu_roots):
    """The planner wrote a 3D network on a one-slice patch, which the plans' own check then refused when read: the
    whole file was refused and no configuration could train."""
    import logging
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("hiennu").addHandler(handler)  # the package logger stops propagating once a command ran
    try:
        _flat_dataset(hiennu_roots["hiennu_raw"], (1, 40, 40))
        out = plan_and_preprocess("FLAT", PlanAndPreprocessOptions(num_processes=1, configurations=["2d"]))
    finally:
        logging.getLogger("hiennu").removeHandler(handler)
    plans = load_plans(out)
    assert "3d_fullres" not in plans.configurations and "2d" in plans.configurations
    assert plans.default_configuration == "2d"
    assert any("configuration 3d_fullres is not planned for this dataset" in r for r in records)
    # a 3D configuration written back by hand is refused by --keep-plans, naming the fields, before any case is written
    flat = plans.configuration("2d")
    edited = dataclasses.replace(flat, name="3d_fullres", patch_size_zyx=[14, *flat.patch_size_zyx[1:]],
                                 network=dataclasses.replace(flat.network, spatial_dims=3))
    plans.configurations["3d_fullres"] = edited
    save_plans(plans, out / "plans.json")
    with pytest.raises(HiennuError, match=r"configuration 3d_fullres: patch_size_zyx \[14, .*network\.spatial_dims 3 "
                                          r"ask for a 3D network, but every case has a single slice, so 13 of the "
                                          r"patch's slices would be padding"):
        plan_and_preprocess("FLAT", PlanAndPreprocessOptions(num_processes=1, configurations=["3d_fullres"],
                                                             keep_plans=True))
    assert not (out / "3d_fullres").exists()


def test_a_network_of_one_stage_is_refused_naming_the_field():
    from hiennu.plans import NetworkPlan, configuration_problems
    config = Configuration("3d_fullres", None, "spacing", [ChannelNormalization("ADC", "none")],
                           patch_size_zyx=[4, 8, 8], target_spacing_zyx=[1.0, 1.0, 1.0],
                           network=NetworkPlan(in_channels=1, features_per_stage=[16], pool_kernel_sizes=[],
                                               dropout_per_stage=[0.0], rule_prior=False))
    assert any("has one stage: the U-Net needs two or more" in p for p in configuration_problems(config))


@pytest.mark.parametrize("direction, axes, words", [
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), [2], "mirroring along x only"),
    ((0, -1, 0, 1, 0, 0, 0, 0, 1), [1], "mirroring along y only"),   # array x runs along world y, array y along x
])
def test_the_mirrored_axis_is_the_one_the_directions_put_left_right(hiennu_roots, direction, axes, words):
    """The planner mirrored array x whatever the images' directions, and its notes called x left-right."""
    _flat_dataset(hiennu_roots["hiennu_raw"], (12, 40, 40), direction=direction, spacing_xyz=(1.0, 1.0, 1.0))
    out = plan_and_preprocess("FLAT", PlanAndPreprocessOptions(num_processes=1, preprocess=False))
    config = load_plans(out).configuration("3d_fullres")
    assert config.augmentation.mirror_axes == axes and words in config.notes



def test_a_missing_plans_file_names_the_command_that_writes_it(hiennu_roots, tmp_path):
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"], num_cases=5)
    with pytest.raises(HiennuError, match=r"NEWP\.json: not found, and --keep-plans preprocesses with an existing plans "
                                          r"file; leave out --keep-plans to plan anew, or copy .*plans\.json to it"):
        plan_and_preprocess("TINY", PlanAndPreprocessOptions(num_processes=1, keep_plans=True, plans_name="NEWP"))
    with pytest.raises(HiennuError, match=r"plan the dataset first: hiennu_plan_and_preprocess -d Dataset004_X -p K1"):
        load_plans(tmp_path / "Dataset004_X" / "K1.json")
