"""Ensembles of configurations: exact averaging, native geometry, the ensemble's own post-processing,
``hiennu_predict -m A B`` and ``-c C1 C2``, one zip (export, verify, install --default, predict), the
challenge container with an ensemble as the default model, old default_model.json and zips, and bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hiennu.cli import export_model as export_cli
from hiennu.cli import install_model as install_cli
from hiennu.cli import predict as predict_cli
from hiennu.cli import predict_challenge as challenge_cli
from hiennu.errors import HiennuError
from hiennu.inference.challenge import CHALLENGE_OUTPUT
from hiennu.inference.configuration_ensemble import ConfigurationEnsemble, ensemble_min_component_voxels
from hiennu.inference.model_registry import read_default_model, resolve_models, set_default_model
from hiennu.inference.model_zip import (MANIFEST, ModelZipError, export_model_zip, export_models, install_model_zip, load_model_zip,
                                        sha256_bytes, verify_model_zip)
from hiennu.inference.predictor import Predictor, build_predictor
from hiennu.io.checkpoint import FINAL
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import read_image, write_image
from hiennu.networks.unet import build_network
from hiennu.paths import EnsembleFolder
from hiennu.plans import save_plans
from hiennu.postprocessing.record import PostProcessing, apply_postprocessing
from hiennu.preprocessing.preprocessor import preprocess_case
from helpers import GEOM, case_arrays, good_members, tiny_plans, zip_with

DATASET = "Dataset001_Tiny"
A, B = "TrainerTest__hiennuPlans__3d_fullres", "TrainerTest__hiennuPlans__3d_lowres"
FAST = dict(device="cpu", use_mirroring=False)


def _model(results: Path, configuration: str = "3d_fullres", size_xyz=(16, 16, 8), seed: int = 0, folds=(0, 1),
           dataset: str = DATASET, plans: str = "hiennuPlans", channels=("ADC", "ZADC"),
           min_component_voxels: int = 0) -> Path:
    """A trained-model folder ``TrainerTest__PLANS__CONFIG`` of freshly initialized weights (checkpoint_final.pth)."""
    base = tiny_plans(size_xyz, min_component_voxels=min_component_voxels)
    config = dataclasses.replace(base.configuration(), name=configuration)
    plans_obj = dataclasses.replace(base, dataset_name=dataset, configurations={configuration: config})
    model_dir = results / dataset / f"TrainerTest__{plans}__{configuration}"
    save_plans(plans_obj, model_dir / "plans.json")
    save_dataset_json(DatasetJson("Tiny", channel_names=list(channels)), model_dir / "dataset.json")
    for k, fold in enumerate(folds):
        torch.manual_seed(seed + k)
        (model_dir / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        torch.save({"network_weights": _contrasted(build_network(config.network), config).state_dict(), "epoch": 3},
                   model_dir / f"fold_{fold}" / FINAL)
    return model_dir


def _contrasted(net: torch.nn.Module, config) -> torch.nn.Module:
    """A freshly initialized network predicts about 0.51 everywhere (an all-lesion mask); its output layer is
    rescaled so that its logits become 50 x (logit - their median on a reference case): masks of about half the
    voxels, different per model, so averaging and thresholding are really tested."""
    data, _, _ = preprocess_case(case_arrays(GEOM), config, spacing_zyx=GEOM.spacing_zyx)
    with torch.no_grad():
        net.eval()
        median = net(torch.from_numpy(data)[None]).median()
        head = net.heads[-1]
        head.weight.mul_(50.0)
        head.bias.copy_(50.0 * (head.bias - median))
    return net


def _pair(results: Path, **kwargs) -> tuple[Path, Path]:
    """Two configurations of one dataset: 3d_fullres on a 16x16x8 grid and 3d_lowres on 12x12x8 (other weights)."""
    return _model(results, **kwargs), _model(results, "3d_lowres", (12, 12, 8), seed=5, **kwargs)


def _ensemble_folder(results: Path, post: PostProcessing | None, folds=(0, 1), names=(A, B)) -> EnsembleFolder:
    """What hiennu_find_best_configuration leaves: members.json and, when given, postprocessing.json."""
    folder = EnsembleFolder.of(results / DATASET, list(names))
    folder.path.mkdir(parents=True)
    folder.members.write_text(json.dumps({"members": sorted(names), "folds": list(folds),
                                          "checkpoint": "checkpoint_final.pth"}))
    if post is not None:
        folder.postprocessing.write_text(json.dumps({"chosen": post.to_dict()}))
    return folder


def _write_cases(folder: Path, n: int = 2) -> None:
    for i in range(n):
        for c, array in enumerate(case_arrays(GEOM, seed=i)):
            write_image(array, GEOM, folder / f"case{i}_{c:04d}.mha")


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.mha"))}


def _geometry(path: Path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection(), img.GetPixelIDTypeAsString()


CAP = PostProcessing(min_component_voxels=2, max_adc=1200.0)  # removes about half of any random mask


# ------------------------------------------------------------------------------------------ arithmetic

def test_an_ensemble_of_a_model_with_itself_is_the_model(tmp_path):
    model = _model(tmp_path)
    twin = shutil.copytree(model, model.with_name("TrainerTest__twinPlans__3d_fullres"))
    single = Predictor.from_model_dir(model, **FAST)
    ensemble = ConfigurationEnsemble.from_paths([model, twin], **FAST)
    images = case_arrays()
    mask, prob = single.predict_case(images, GEOM)
    mask2, prob2 = ensemble.predict_case(images, GEOM)
    assert np.array_equal(prob, prob2) and np.array_equal(mask, mask2) and 0 < mask.sum() < mask.size


def test_two_configurations_average_with_equal_weights_on_the_native_grid(tmp_path):
    a, b = _pair(tmp_path)
    images = case_arrays()
    pa = Predictor.from_model_dir(a, folds=[1], **FAST).predict_case(images, GEOM)[1]
    pb = Predictor.from_model_dir(b, folds=[1], **FAST).predict_case(images, GEOM)[1]
    ensemble = ConfigurationEnsemble.from_paths([a, b], folds=[1], **FAST)
    mask, prob = ensemble.predict_case(images, GEOM)
    expected = (pa + pb) / np.float32(2)
    assert prob.shape == GEOM.size_zyx and prob.dtype == np.float32
    assert np.array_equal(prob, expected)
    assert np.array_equal(mask, (expected >= 0.5).astype(np.uint8)) and mask.dtype == np.uint8
    assert not np.array_equal(pa, pb)  # two different models, so the mean is a real test
    image = ensemble.predict_files(*(geom_image(x) for x in images))
    assert (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == \
        (GEOM.size_xyz, GEOM.spacing_xyz, GEOM.origin_xyz, GEOM.direction)


def geom_image(array: np.ndarray) -> sitk.Image:
    return GEOM.apply_to(sitk.GetImageFromArray(array))


def test_folder_prediction_keeps_each_input_geometry_and_saves_the_mean(tmp_path):
    a, b = _pair(tmp_path / "results")
    _write_cases(tmp_path / "in")
    ensemble = ConfigurationEnsemble.from_paths([a, b], **FAST)
    report = ensemble.predict_folder(tmp_path / "in", tmp_path / "out", save_probabilities=True)
    assert report.ok and sorted(report.predicted) == ["case0", "case1"]
    for i in range(2):
        got, ref = _geometry(tmp_path / "out" / f"case{i}.mha"), _geometry(tmp_path / "in" / f"case{i}_0000.mha")
        assert got[:4] == ref[:4] and got[4] == "8-bit unsigned integer"
        with np.load(tmp_path / "out" / f"case{i}_prob.npz") as f:
            saved = f["probabilities"]
        mask, prob = ensemble.predict_case(case_arrays(GEOM, seed=i), GEOM)
        assert np.array_equal(saved, prob)
        assert np.array_equal(_masks(tmp_path / "out")[f"case{i}.mha"], mask)


# ------------------------------------------------------------------------------------------ post-processing

def test_the_ensembles_own_postprocessing_is_applied_and_the_members_are_not(tmp_path):
    results = tmp_path / "results"
    a, b = _pair(results)
    (a / "postprocessing.json").write_text(json.dumps({"chosen": {"min_component_voxels": 10 ** 6}}))  # not used
    folder = _ensemble_folder(results, CAP, folds=(1,))
    plain = ConfigurationEnsemble.from_paths([a, b], use_postprocessing=False, **FAST)
    ensemble = ConfigurationEnsemble.from_paths([a, b], **FAST)
    assert ensemble.name == folder.path.name and ensemble.postprocessing == CAP
    assert [m.folds for m in ensemble.members] == [["1"], ["1"]]  # members.json's folds
    images = case_arrays()
    raw, _ = ConfigurationEnsemble.from_paths([a, b], folds=[1], use_postprocessing=False, **FAST).predict_case(
        images, GEOM)
    mask, _ = ensemble.predict_case(images, GEOM)
    assert np.array_equal(mask, apply_postprocessing(raw, CAP, images[1], images[0], GEOM.spacing_zyx))
    assert 0 < mask.sum() < raw.sum()
    assert plain.postprocessing.is_identity
    assert ConfigurationEnsemble.from_paths([a, b], min_component_voxels=0, **FAST).postprocessing.min_component_voxels == 0


def test_an_ensemble_judges_the_rules_components_by_its_mean_probability_in_case_and_folder_prediction(tmp_path):
    """An ensemble record that asks the network (judged-rule) is applied with the members' mean probabilities, the
    same ones the ensemble returns, case by case and in folder prediction (which must ask for them although it
    saves none)."""
    from hiennu.postprocessing.lesion_filter import FEATURES_WITH_PROBABILITY, ComponentFilter
    results = tmp_path / "results"
    a, b = _pair(results)
    # keeps a component of the rule when the mean probability over it is at least 0.5 (here about half of them)
    judge = ComponentFilter((0.0,) * 4, (1.0,) * 4, (0.0, 0.0, 0.0, 20.0), -10.0, 0.5, FEATURES_WITH_PROBABILITY)
    post = PostProcessing(component_filter=judge, start_from_rule=True)
    _ensemble_folder(results, post, folds=(1,))
    ensemble = ConfigurationEnsemble.from_paths([a, b], **FAST)
    assert ensemble.postprocessing == post
    images = case_arrays()
    mask, prob = ensemble.predict_case(images, GEOM)
    expected = apply_postprocessing(np.zeros(GEOM.size_zyx, np.uint8), post, images[1], images[0], GEOM.spacing_zyx,
                                    prob)
    assert np.array_equal(mask, expected)
    rule = apply_postprocessing(np.zeros(GEOM.size_zyx, np.uint8), PostProcessing(start_from_rule=True), images[1],
                                images[0])
    assert 0 < mask.sum() < rule.sum()   # the judge keeps some of the rule's components, not all
    _write_cases(tmp_path / "in", n=1)
    assert ensemble.predict_folder(tmp_path / "in", tmp_path / "out").ok
    assert np.array_equal(_masks(tmp_path / "out")["case0.mha"], mask)
    assert not list((tmp_path / "out").glob("*.npz"))


def test_the_largest_plans_size_rule_of_the_members_applies(tmp_path):
    a = _model(tmp_path, min_component_voxels=4)
    b = _model(tmp_path, "3d_lowres", (12, 12, 8), min_component_voxels=7)
    assert ensemble_min_component_voxels([Predictor.from_model_dir(p, **FAST).configuration for p in (a, b)]) == 7
    assert ConfigurationEnsemble.from_paths([a, b], **FAST).postprocessing.min_component_voxels == 7
    _ensemble_folder(tmp_path, PostProcessing(min_component_voxels=12))
    assert ConfigurationEnsemble.from_paths([a, b], **FAST).postprocessing.min_component_voxels == 12


# ------------------------------------------------------------------------------------------ hiennu_predict

def test_predict_with_m_and_with_several_configurations(hiennu_roots, tmp_path, capsys):
    results = hiennu_roots["hiennu_results"]
    a, b = _pair(results)
    _write_cases(tmp_path / "in")
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "m"), "-m", str(a), str(b),
                             "--disable-tta", "--save-probabilities", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert ("hiennu_find_best_configuration -d Dataset001_Tiny -c 3d_fullres 3d_lowres -tr TrainerTest "
            "-p hiennuPlans -f 0 1\n") in err  # how to choose the missing ensemble post-processing, on the folds there
    expected = ConfigurationEnsemble.from_paths([a, b], **FAST)
    for i in range(2):
        assert np.array_equal(_masks(tmp_path / "m")[f"case{i}.mha"],
                              expected.predict_case(case_arrays(GEOM, seed=i), GEOM)[0])
    _ensemble_folder(results, CAP)
    args = ["-i", str(tmp_path / "in"), "-d", "Tiny", "-tr", "TrainerTest", "-c", "3d_fullres", "3d_lowres",
            "-p", "hiennuPlans", "-f", "0", "1", "-chk", "final", "--disable-tta", "-q"]
    assert predict_cli.main(args + ["-o", str(tmp_path / "c")]) == 0
    with_post = ConfigurationEnsemble.from_paths([a, b], **FAST)
    assert with_post.postprocessing == CAP
    masks = _masks(tmp_path / "c")
    for i in range(2):
        assert np.array_equal(masks[f"case{i}.mha"], with_post.predict_case(case_arrays(GEOM, seed=i), GEOM)[0])
    (tmp_path / "c" / "case1.mha").write_bytes(b"")  # a damaged output is predicted again, the other kept
    assert predict_cli.main(args + ["-o", str(tmp_path / "c"), "--continue-prediction"]) == 0
    assert all(np.array_equal(masks[k], v) for k, v in _masks(tmp_path / "c").items())
    # the ensemble folder itself names the models (members.json), folds and post-processing
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "e"), "-m",
                             str(EnsembleFolder.of(results / DATASET, [A, B]).path), "--disable-tta", "-q"]) == 0
    assert all(np.array_equal(masks[k], v) for k, v in _masks(tmp_path / "e").items())
    # two single-model zips: the same members, no ensemble folder beside them, so no ensemble post-processing
    zips = [export_model_zip(m, tmp_path / f"{m.name}.zip") for m in (a, b)]
    from_zips = ConfigurationEnsemble.from_paths(zips, **FAST)
    assert from_zips.postprocessing.is_identity
    assert np.array_equal(from_zips.predict_case(case_arrays(GEOM), GEOM)[1],
                          expected.predict_case(case_arrays(GEOM), GEOM)[1])
    # with TTA and one -tr/-p per configuration: the same models, a different (mirrored) mean
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "t"), "-d", "1", "-tr", "TrainerTest",
                             "TrainerTest", "-c", "3d_fullres", "3d_lowres", "-q"]) == 0
    tta = ConfigurationEnsemble.from_paths([a, b], device="cpu")
    assert np.array_equal(_masks(tmp_path / "t")["case0.mha"], tta.predict_case(case_arrays(GEOM), GEOM)[0])


def test_hiennu_ensemble_of_separate_predictions_is_hiennu_predict_with_both_models(hiennu_roots, tmp_path):
    """nnU-Net's habit: predict with each model on its own (--save-probabilities npz), then hiennu_ensemble the
    folders; the masks and mean maps are those of hiennu_predict -m A B (with TTA), bit for bit."""
    from hiennu.cli import ensemble as ensemble_cli
    from hiennu.io.probabilities import read_probability_map
    a, b = _pair(hiennu_roots["hiennu_results"])
    _write_cases(tmp_path / "in")
    for name, models in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / name), "-m", *map(str, models),
                                 "--save-probabilities", "--device", "cpu", "-q"]) == 0
    assert ensemble_cli.main(["-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "e"),
                              "--save-probabilities", "-q"]) == 0
    together, separate = _masks(tmp_path / "ab"), _masks(tmp_path / "e")
    assert together.keys() == separate.keys() == {"case0.mha", "case1.mha"}
    for k in together:
        assert np.array_equal(together[k], separate[k]) and 0 < together[k].sum() < together[k].size
        assert _geometry(tmp_path / "e" / k) == _geometry(tmp_path / "ab" / k)
        case = k[: -len(".mha")]
        mean, geometry = read_probability_map(tmp_path / "e" / f"{case}_prob.npz", case)
        assert np.array_equal(mean, read_probability_map(tmp_path / "ab" / f"{case}_prob.npz", case)[0])
        assert not np.array_equal(mean, read_probability_map(tmp_path / "a" / f"{case}_prob.npz", case)[0])


def test_a_model_folder_given_as_a_relative_path_predicts_as_given_absolutely(hiennu_roots, tmp_path, monkeypatch):
    """``hiennu_predict -m .`` inside a model folder (and ``-m ../M``): the folder's own name says what it is, so
    the path is resolved first; "." has no name and was refused as "not a trained model folder"."""
    a, b = _pair(hiennu_roots["hiennu_results"])
    _write_cases(tmp_path / "in", 1)
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "abs"), "-m", str(b), "--disable-tta",
                             "-q"]) == 0
    monkeypatch.chdir(b)
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "dot"), "-m", ".", "--disable-tta",
                             "-q"]) == 0
    monkeypatch.chdir(b / "fold_0")
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "up"), "-m", "..", str(a),
                             "--disable-tta", "-q"]) == 0
    assert Predictor.from_model_dir("..", **FAST).configuration.name == "3d_lowres"
    dot, absolute = _masks(tmp_path / "dot"), _masks(tmp_path / "abs")
    assert dot.keys() == absolute.keys() == {"case0.mha"} and np.array_equal(dot["case0.mha"], absolute["case0.mha"])
    ensemble = ConfigurationEnsemble.from_paths([b, a], **FAST).predict_case(case_arrays(GEOM), GEOM)[0]
    assert np.array_equal(_masks(tmp_path / "up")["case0.mha"], ensemble)
    # a link named TRAINER__PLANS__CONFIG to a folder stored under another name keeps its own name
    store = tmp_path / "store" / "run42"
    store.parent.mkdir()
    b.rename(store)
    b.symlink_to(store, target_is_directory=True)
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "link"), "-m", str(b), "--disable-tta",
                             "-q"]) == 0
    assert Predictor.from_model_dir(b, **FAST).configuration.name == "3d_lowres"
    assert np.array_equal(_masks(tmp_path / "link")["case0.mha"], absolute["case0.mha"])
    # ".." after a link goes where the file system goes; an ensemble folder reached through a link elsewhere finds
    # its members beside its real folder
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "to_fold").symlink_to(a / "fold_0", target_is_directory=True)
    via = tmp_path / "elsewhere" / "to_fold" / ".." / ".." / a.name
    assert resolve_models([str(via)]) == [a]


def test_an_ensemble_folder_reached_through_a_link_elsewhere_finds_its_members(hiennu_roots, tmp_path):
    a, b = _pair(hiennu_roots["hiennu_results"])
    folder = _ensemble_folder(hiennu_roots["hiennu_results"], CAP)
    (tmp_path / "shortcuts").mkdir()
    (tmp_path / "shortcuts" / folder.path.name).symlink_to(folder.path, target_is_directory=True)
    (path,) = resolve_models([str(tmp_path / "shortcuts" / folder.path.name)])
    assert path == folder.path.resolve()
    linked = ConfigurationEnsemble.from_paths([path], **FAST)
    assert linked.postprocessing == CAP and len(linked.members) == 2


def test_resolve_models_pairs_the_options(hiennu_roots):
    results = hiennu_roots["hiennu_results"]
    a, b = _pair(results)
    assert resolve_models(dataset="Tiny", trainer="TrainerTest", configuration=["3d_fullres", "3d_lowres"]) == [a, b]
    assert resolve_models([str(a), str(b)]) == [a, b]
    assert resolve_models(dataset="Tiny", configuration="3d_lowres") == [b]
    with pytest.raises(HiennuError, match="or one per model, but -tr names 3, -c names 2"):
        resolve_models(dataset="Tiny", trainer=["T1", "T2", "T3"], configuration=["3d_fullres", "3d_lowres"])


# ------------------------------------------------------------------------------------------ one zip

def test_ensemble_zip_round_trip(hiennu_roots, tmp_path, monkeypatch):
    results = hiennu_roots["hiennu_results"]
    a, b = _pair(results)
    _ensemble_folder(results, CAP)
    out = tmp_path / "shared" / "ensemble.zip"
    assert export_cli.main(["-m", str(a), str(b), "-o", str(out), "-q"]) == 0
    contents = verify_model_zip(out)
    assert contents.is_ensemble and contents.folds == ["0", "1"] and contents.checkpoint == FINAL
    assert contents.models == [f"{DATASET}/{A}", f"{DATASET}/{B}"]
    assert contents.model == f"{DATASET}/ensembles/ensemble___{A}___{B}"
    with zipfile.ZipFile(out) as zf:
        assert json.loads(zf.read(f"{contents.model}/members.json")) == {
            "members": [A, B], "folds": [0, 1], "checkpoint": FINAL}
        assert json.loads(zf.read(f"{contents.model}/postprocessing.json"))["chosen"] == CAP.to_dict()
    assert load_model_zip(out, model=B).configuration == "3d_lowres"
    with pytest.raises(HiennuError, match="holds the ensemble of .*load_ensemble_zip"):
        load_model_zip(out)
    # -d -tr -c with two configurations writes the same zip contents
    assert export_cli.main(["-d", "Tiny", "-tr", "TrainerTest", "-c", "3d_fullres", "3d_lowres", "-o",
                            str(tmp_path / "c.zip"), "-q"]) == 0
    assert verify_model_zip(tmp_path / "c.zip").files == contents.files
    folder_masks_dir = tmp_path / "folder_masks"
    _write_cases(tmp_path / "in")
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(folder_masks_dir), "-m", str(a), str(b),
                             "--disable-tta", "-q"]) == 0
    # a fresh machine: install the zip as its default model, predict with no model named
    fresh = tmp_path / "fresh_results"
    monkeypatch.setenv("hiennu_results", str(fresh))
    assert install_cli.main([str(out), "--default", "-q"]) == 0
    ensemble_dir = fresh / contents.model
    assert read_default_model() == ensemble_dir
    assert json.loads((fresh / "default_model.json").read_text()) == {
        "ensemble_dir": contents.model, "model_dirs": contents.models}
    assert (fresh / DATASET / A / "fold_1" / FINAL).is_file() and (ensemble_dir / "postprocessing.json").is_file()
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "zip_default"), "--disable-tta",
                             "-q"]) == 0
    assert _masks(tmp_path / "zip_default").keys() == _masks(folder_masks_dir).keys()
    assert all(np.array_equal(v, _masks(folder_masks_dir)[k]) for k, v in _masks(tmp_path / "zip_default").items())
    # the zip itself, without installing, through Predictor and build_predictor
    for predictor in (Predictor.from_path(out, **FAST), build_predictor(str(out), device="cpu", use_mirroring=False)):
        assert isinstance(predictor, ConfigurationEnsemble) and predictor.postprocessing == CAP
        assert np.array_equal(predictor.predict_case(case_arrays(GEOM), GEOM)[0], _masks(folder_masks_dir)["case0.mha"])
    # installing again changes nothing; another ensemble post-processing is refused without --overwrite
    assert install_model_zip(out) == ensemble_dir
    (ensemble_dir / "postprocessing.json").write_text(json.dumps({"chosen": {"min_component_voxels": 3}}))
    with pytest.raises(HiennuError, match="already exist.*--overwrite"):
        install_model_zip(out)
    assert install_model_zip(out, overwrite=True) == ensemble_dir
    assert json.loads((ensemble_dir / "postprocessing.json").read_text())["chosen"] == CAP.to_dict()
    assert sorted(p.name for p in (fresh / DATASET).iterdir()) == sorted([A, B, "ensembles"])  # nothing staged left


def test_an_ensemble_too_large_to_list_in_a_file_name_goes_by_a_digest_of_its_members(hiennu_roots, tmp_path):
    """Seven models whose names together pass the 255 bytes a file name may have: the folder is named
    ensemble___7-models-DIGEST, its members come from members.json, and it predicts, exports to one zip, installs
    and predicts again like any ensemble; a members.json naming other models, or a zip whose manifest names
    another digest, is refused."""
    results = hiennu_roots["hiennu_results"]
    plans = [f"Plans{k}WithALongIdentifierForThisTest" for k in range(7)]
    models = [_model(results, plans=p, seed=10 * k, folds=(0,)) for k, p in enumerate(plans)]
    names = sorted(m.name for m in models)
    folder = _ensemble_folder(results, CAP, folds=(0,), names=names)
    assert len("___".join(["ensemble", *names]).encode()) > 255
    assert re.fullmatch(r"ensemble___7-models-[0-9a-f]{16}", folder.path.name)
    assert EnsembleFolder.of(results / DATASET, list(reversed(names))).path == folder.path  # order-free
    assert EnsembleFolder.of(results / DATASET, names[:6] + [A]).path != folder.path
    from hiennu.inference.ensemble_members import is_ensemble_dir, load_ensemble_members
    assert is_ensemble_dir(folder.path) and load_ensemble_members(folder.path).members == tuple(names)
    _write_cases(tmp_path / "in", 1)
    assert predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "e"), "-m", str(folder.path),
                             "--disable-tta", "-q"]) == 0
    expected = ConfigurationEnsemble.from_paths(models, **FAST)
    assert expected.name == folder.path.name and expected.postprocessing == CAP
    mask = expected.predict_case(case_arrays(GEOM), GEOM)[0]
    assert np.array_equal(_masks(tmp_path / "e")["case0.mha"], mask) and 0 < mask.sum()
    out = tmp_path / "seven.zip"
    assert export_cli.main(["-m", str(folder.path), "-o", str(out), "-q"]) == 0
    contents = verify_model_zip(out)
    assert contents.model == f"{DATASET}/ensembles/{folder.path.name}" and len(contents.models) == 7
    installed = install_model_zip(out, root=tmp_path / "fresh")
    assert installed == tmp_path / "fresh" / contents.model
    assert np.array_equal(ConfigurationEnsemble.from_ensemble_dir(installed, **FAST).predict_case(
        case_arrays(GEOM), GEOM)[0], mask)
    with zipfile.ZipFile(out) as zf:  # the manifest names another digest: refused before anything is written
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    other = f"{DATASET}/ensembles/ensemble___7-models-{'0' * 16}"
    members = {n.replace(manifest["ensemble"], other): v for n, v in members.items()}
    manifest["files"] = {n.replace(manifest["ensemble"], other): v for n, v in manifest["files"].items()}
    manifest["ensemble"] = other
    with pytest.raises(ModelZipError, match="is not DatasetNNN_Name/ensembles/ensemble___M1___M2 naming exactly"):
        install_model_zip(zip_with(tmp_path / "other.zip", members, manifest), root=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    record = json.loads(folder.members.read_text())  # members.json naming six of them and another model
    folder.members.write_text(json.dumps({**record, "members": sorted(names[:6] + [A])}))
    with pytest.raises(HiennuError, match=f"but its folder is {folder.path.name}"):
        load_ensemble_members(folder.path)


def test_an_ensemble_whose_listed_name_nearly_fills_a_file_name_installs_and_reinstalls(hiennu_roots, tmp_path):
    """A listed name of up to 255 bytes is a valid folder name, so installing must not stage or set aside the folder
    under a longer one (".NAME.<8 random characters>.installing" was 21 bytes longer and failed with "File name
    too long")."""
    results = hiennu_roots["hiennu_results"]
    plans = [f"P{k}" + "x" * 19 for k in range(5)]   # 5 members: a listed name of 148 + 5 * 20 = 248 bytes
    models = [_model(results, plans=p, seed=10 * k, folds=(0,)) for k, p in enumerate(plans)]
    folder = _ensemble_folder(results, CAP, folds=(0,), names=sorted(m.name for m in models))
    assert 240 <= len(folder.path.name.encode()) <= 255 and folder.path.name.count("___") == 5
    out = export_models([folder.path], None, None, None, "hiennuPlans", tmp_path / "e.zip")
    fresh = tmp_path / "fresh"
    installed = install_model_zip(out, root=fresh)
    assert installed.name == folder.path.name
    (installed / "postprocessing.json").write_text(json.dumps({"chosen": {"min_component_voxels": 3}}))
    assert install_model_zip(out, root=fresh, overwrite=True) == installed   # the old folder set aside, then removed
    assert json.loads((installed / "postprocessing.json").read_text())["chosen"] == CAP.to_dict()
    assert not [p for p in (fresh / DATASET / "ensembles").iterdir() if p.name.startswith(".")]


def test_challenge_with_an_ensemble_as_the_default_model(hiennu_roots, tmp_path):
    results = hiennu_roots["hiennu_results"]
    a, b = _pair(results)
    folder = _ensemble_folder(results, CAP)
    set_default_model(folder.path)
    adc_dir, zadc_dir = (tmp_path / "input" / "images" / d for d in ("skull-stripped-adc-brain-mri", "z-score-adc"))
    adc, zadc = case_arrays()
    write_image(adc, GEOM, adc_dir / "5b1e0c3a-adc.mha")
    write_image(zadc, GEOM, zadc_dir / "77c0aa19-zadc.mha")
    assert challenge_cli.main(["--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"),
                               "--disable-tta", "--device", "cpu", "-q"]) == 0
    out = tmp_path / "output" / CHALLENGE_OUTPUT
    got, ref = _geometry(out), _geometry(adc_dir / "5b1e0c3a-adc.mha")
    assert got[:4] == ref[:4] and got[4] == "8-bit unsigned integer"
    expected = ConfigurationEnsemble.from_ensemble_dir(folder.path, **FAST).predict_case([adc, zadc], GEOM)[0]
    assert np.array_equal(read_image(out)[0], expected)


# ------------------------------------------------------------------------------------------ older files still load

def test_old_default_model_json_and_old_zips_still_load(hiennu_roots, tmp_path):
    results = hiennu_roots["hiennu_results"]
    a, b = _pair(results)
    (results / "default_model.json").write_text(json.dumps({"model_dir": f"{DATASET}/{B}"}))  # as hiennu wrote it
    assert read_default_model() == results / DATASET / B
    assert isinstance(build_predictor(device="cpu", use_mirroring=False), Predictor)
    single = export_model_zip(a, tmp_path / "a.zip")
    with zipfile.ZipFile(single) as zf:
        manifest = json.loads(zf.read(MANIFEST))
    assert set(manifest) == {"format", "format_version", "model", "checkpoint", "folds", "half_precision", "files"}
    assert (manifest["format"], manifest["format_version"], manifest["model"]) == ("hiennu-model", 1, f"{DATASET}/{A}")
    old = zip_with(tmp_path / "old.zip", good_members(tmp_path))  # a zip laid out by hand in the first format
    assert isinstance(Predictor.from_path(old, **FAST), Predictor)
    fresh = tmp_path / "fresh"
    assert install_model_zip(old, root=fresh, make_default=True) == fresh / "Dataset001_Tiny/TrainerTest__hiennuPlans__3d_fullres"
    assert json.loads((fresh / "default_model.json").read_text()) == {
        "model_dir": "Dataset001_Tiny/TrainerTest__hiennuPlans__3d_fullres"}


# ------------------------------------------------------------------------------------------ bad input

def _refused(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    """The command exits 1 with one `error:` line matching ``message`` (the last line, or followed only by the
    listing of trained models that an unknown -d/-tr/-c has always printed), and writes no output folder."""
    _write_cases(tmp_path / "in", 1)
    code = predict_cli.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--disable-tta", "-q"] + argv)
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and all(line.startswith("  - ") for line in lines[errors[0] + 1:]), lines
    assert message in lines[errors[0]], lines[errors[0]]
    assert not (tmp_path / "out").exists()


def test_models_of_different_datasets_are_refused(hiennu_roots, tmp_path, capsys):
    a = _model(hiennu_roots["hiennu_results"])
    other = _model(hiennu_roots["hiennu_results"], "3d_lowres", (12, 12, 8), dataset="Dataset002_Other")
    _refused(tmp_path, capsys, ["-m", str(a), str(other)], "models of different datasets cannot be ensembled")


def test_models_reading_different_channels_are_refused(hiennu_roots, tmp_path, capsys):
    a = _model(hiennu_roots["hiennu_results"])
    b = _model(hiennu_roots["hiennu_results"], "3d_lowres", (12, 12, 8), channels=("ADC", "DWI"))
    _refused(tmp_path, capsys, ["-m", str(a), str(b)], f"{DATASET}/{A} reads channels ADC, ZADC but {DATASET}/{B} "
                                                       f"reads ADC, DWI")


def test_a_member_missing_a_fold_is_refused(hiennu_roots, tmp_path, capsys):
    results = hiennu_roots["hiennu_results"]
    a = _model(results)
    b = _model(results, "3d_lowres", (12, 12, 8), folds=(0,))
    _refused(tmp_path, capsys, ["-m", str(a), str(b)], "the ensemble's models hold different folds")
    _refused(tmp_path, capsys, ["-m", str(a), str(b), "-f", "1"], f"no {FINAL} in fold(s) 1 (it has 0); train them")
    _ensemble_folder(results, None)  # members.json asks for folds 0 and 1
    _refused(tmp_path, capsys, ["-c", "3d_fullres", "3d_lowres", "-d", "Tiny"], "no checkpoint_final.pth in fold(s) 1")


def test_unknown_models_are_refused(hiennu_roots, tmp_path, capsys):
    a = _model(hiennu_roots["hiennu_results"])
    _refused(tmp_path, capsys, ["-m", str(a), str(tmp_path / "nope")], "nope not found")
    _refused(tmp_path, capsys, ["-d", "Tiny", "-c", "3d_fullres", "3d_nope"], "no trained model matches -d Tiny -c 3d_nope")
    _refused(tmp_path, capsys, ["-m", str(a), str(a)], "is named twice")


def test_a_default_ensemble_whose_member_is_gone_is_refused(hiennu_roots, tmp_path, capsys):
    results = hiennu_roots["hiennu_results"]
    a, b = _pair(results)
    set_default_model(_ensemble_folder(results, CAP).path)
    shutil.rmtree(b)
    _refused(tmp_path, capsys, [], f"its member {B} is not a trained model folder")


def test_an_ensemble_zip_whose_members_json_disagrees_is_refused(hiennu_roots, tmp_path):
    a, b = _pair(hiennu_roots["hiennu_results"])
    zip_path = tmp_path / "e.zip"
    assert export_cli.main(["-m", str(a), str(b), "-f", "0", "-o", str(zip_path), "-q"]) == 0
    with zipfile.ZipFile(zip_path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    record = f"{manifest['ensemble']}/members.json"
    members[record] = json.dumps({"members": [A, B], "folds": [0, 1], "checkpoint": FINAL}).encode()
    manifest["files"][record] = sha256_bytes(members[record])
    tampered = zip_with(tmp_path / "t.zip", members, manifest)
    with pytest.raises(ModelZipError, match="members.json .* disagrees with manifest.json"):
        install_model_zip(tampered, root=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_exporting_an_ensemble_folder_takes_its_checkpoint(hiennu_roots, tmp_path):
    """The ensemble was scored (and its post-processing chosen) with members.json's checkpoint: the zip ships
    that one by default, and another one is refused rather than shipped beside a record chosen for other weights."""
    results = hiennu_roots["hiennu_results"]
    a, b = _pair(results)
    folder = _ensemble_folder(results, CAP)
    record = json.loads(folder.members.read_text())
    folder.members.write_text(json.dumps({**record, "checkpoint": "checkpoint_best.pth"}))
    for d in (a, b):
        for fold in (0, 1):
            shutil.copy(d / f"fold_{fold}" / FINAL, d / f"fold_{fold}" / "checkpoint_best.pth")
    out = tmp_path / "best.zip"
    assert export_cli.main(["-m", str(folder.path), "-o", str(out), "-q"]) == 0
    assert verify_model_zip(out).checkpoint == "checkpoint_best.pth"
    with pytest.raises(HiennuError, match="export with -chk checkpoint_best.pth"):
        export_models([folder.path], None, None, None, "hiennuPlans", tmp_path / "final.zip", None, "final")
    assert not (tmp_path / "final.zip").exists()


def test_m_with_c_is_refused_not_ignored(hiennu_roots):
    a, b = _pair(hiennu_roots["hiennu_results"])
    with pytest.raises(HiennuError, match="not both"):
        resolve_models([a, b], configuration=["2d"])
    with pytest.raises(HiennuError, match="not both"):
        resolve_models(str(a), DATASET, "TrainerTest", ["3d_fullres", "3d_lowres"])


def test_a_failed_swap_puts_every_folder_back(tmp_path, monkeypatch):
    """Installing several folders (an ensemble zip) is all or nothing: when the second rename fails, the first
    new folder is taken out again and both old folders are back as they were."""
    from hiennu.inference import model_zip
    root = tmp_path / "results"
    staged = {}
    for name in ("D/A", "D/B"):
        (root / name).mkdir(parents=True)
        (root / name / "old.txt").write_text("old")
        staging = tmp_path / f"staging_{name[-1]}"
        staging.mkdir()
        (staging / "new.txt").write_text("new")
        staged[name] = staging
    real_replace = model_zip.os.replace

    def failing(src, dst):
        if Path(src) == staged["D/B"]:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(model_zip.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        model_zip._swap_in(root, staged)
    for name in ("D/A", "D/B"):
        assert sorted(p.name for p in (root / name).iterdir()) == ["old.txt"]
    assert not list((root / "D").glob(".hiennu-*"))   # no staging or set-aside folder left


def test_each_file_of_a_zip_is_hashed_once_per_load(hiennu_roots, tmp_path, monkeypatch):
    """Verifying a zip reads and hashes every file (checkpoints can be hundreds of MB); a load verifies once and
    hands the answer down, however many loaders the zip passes through (an ensemble zip was hashed twice to
    install or load by path, a single-model zip of an ensemble three times)."""
    import collections
    from hiennu.inference import model_zip
    results = hiennu_roots["hiennu_results"]
    a, b = _pair(results)
    _ensemble_folder(results, CAP)
    ensemble_zip = export_models([a, b], None, None, None, "hiennuPlans", tmp_path / "ensemble.zip")
    single = [export_model_zip(m, tmp_path / f"{m.name}.zip") for m in (a, b)]
    hashed = collections.Counter()
    real = model_zip.member_sha256

    def counting(zf, name):
        hashed[(zf.filename, name)] += 1
        return real(zf, name)

    monkeypatch.setattr(model_zip, "member_sha256", counting)

    def once(load, *zips):
        hashed.clear()
        load()
        listed = set()
        for z in zips:
            with zipfile.ZipFile(z) as zf:
                listed |= {(str(z), name) for name in json.loads(zf.read(MANIFEST))["files"]}
        assert set(hashed) == listed and set(hashed.values()) == {1}, dict(hashed)

    once(lambda: ConfigurationEnsemble.from_paths([ensemble_zip], **FAST), ensemble_zip)
    once(lambda: Predictor.from_path(ensemble_zip, **FAST), ensemble_zip)
    once(lambda: build_predictor(str(ensemble_zip), device="cpu", use_mirroring=False), ensemble_zip)
    once(lambda: ConfigurationEnsemble.from_paths(single, **FAST), *single)
    once(lambda: install_model_zip(ensemble_zip, root=tmp_path / "r1"), ensemble_zip)
    once(lambda: install_model_zip(single[0], root=tmp_path / "r2"), single[0])
