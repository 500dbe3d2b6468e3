"""hiennu_find_best_configuration and the validation probabilities it averages (hiennu_train --npz).

The model folders here are written directly (probabilities, masks, summaries), not trained, so every number is
known by hand: two configurations whose false positives sit in different places, so their ensemble (mean
probability >= 0.5) is exactly the label. Post-processing (remove < 5 vox) cleans each model's 4-voxel false
positives, so with it every candidate is exact; a model that misses part of each lesion instead (no false
positive, a higher raw Dice, nothing for post-processing to fix) separates the default choice (nested Dice with
post-processing) from nnU-Net's (raw Dice). One test trains tiny folds with --npz end to end (about 12 s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_plans
from hiennu.cli import find_best_configuration as cli
from hiennu.cli import predict as predict_cli
from hiennu.ensembling.best_configuration import FindBestOptions, choose_best, find_best_configuration
from hiennu.ensembling.choice import Selection
from hiennu.ensembling.ensemble_cv import Candidate, candidates, cv_mask
from hiennu.io.probabilities import mean_probabilities
from hiennu.ensembling.inference_information import (ChosenConfiguration, candidate_scores,
                                                     load_inference_information, predict_command)
from hiennu.errors import HiennuError
from hiennu.inference.folder_prediction import write_probabilities
from hiennu.io.atomic import write_json
from hiennu.io.checkpoint import BEST, FINAL
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, read_image, write_image
from hiennu.paths import INFERENCE_INFORMATION_FILE, EnsembleFolder, ModelFolder
from hiennu.plans import Plans, load_plans, save_plans
from hiennu.postprocessing.record import postprocessing_from_record
from hiennu.postprocessing.rule_folder import load_rule_folder
from hiennu.training.options import TrainingOptions

DATASET = "Dataset001_Tiny"
GEO = Geometry((12, 12, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
A, B = "TrainerX__hiennuPlans__3d_fullres", "TrainerX__hiennuPlans__3d_lowres"
C, D = "TrainerY__hiennuPlans__3d_fullres", "TrainerY__hiennuPlans__3d_lowres"
LESION = (slice(2, 4), slice(3, 7), slice(3, 7))        # 32 voxels
MISSED = (slice(2, 4), slice(3, 4), slice(3, 7))        # 8 of them: what an under-segmenting model misses
FP_A = (slice(5, 6), slice(8, 10), slice(8, 10))        # 4 voxels: model A's false positive
FP_B = (slice(5, 6), slice(1, 3), slice(8, 10))         # 4 voxels: model B's


def _label(i: int) -> np.ndarray:
    label = np.zeros(GEO.size_zyx, np.uint8)
    if i % 3 != 2:  # every third case has no lesion
        label[LESION] = 1
    return label


def _probabilities(model: str, i: int) -> np.ndarray:
    """0.7 on the lesion, 0.8 on the model's own false positive and 0.1 on the other's: alone each marks its false
    positive, their mean (0.45 there) does not."""
    prob = np.full(GEO.size_zyx, 0.05, np.float32)
    if i % 3 != 2:
        prob[LESION] = 0.7
    prob[FP_A], prob[FP_B] = (0.8, 0.1) if model == A else (0.1, 0.8)
    return prob


def _under_segmenting(model: str, i: int) -> np.ndarray:
    """No false positive, but 8 of the 32 lesion voxels missed: Dice 48/56 on a lesion case, 1 on an empty one
    (raw mean 0.905, above a model with false positives, 0.627), and nothing post-processing can add back."""
    prob = np.full(GEO.size_zyx, 0.05, np.float32)
    if i % 3 != 2:
        prob[LESION] = 0.7
        prob[MISSED] = 0.1
    return prob


def _write_model(results: Path, name: str, split: list[list[str]], cases: dict[str, int],
                 probabilities=_probabilities) -> Path:
    model = ModelFolder(results / DATASET / name)
    config = tiny_plans().configuration("3d_fullres")
    save_plans(Plans(DATASET, ["ADC", "ZADC"], {"3d_fullres": config,
                                                "3d_lowres": dataclasses.replace(config, name="3d_lowres")}),
               model.plans)
    save_dataset_json(DatasetJson("Tiny"), model.dataset_json)
    for fold, val in enumerate(split):
        for case in val:
            prob = probabilities(name, cases[case])
            write_probabilities(prob, GEO, model.validation_probabilities(fold, case))
            write_image(cv_mask(prob), GEO, model.validation_dir(fold) / f"{case}.mha")
        write_json({"checkpoint": FINAL, "probabilities": True, "per_case": [{"case_id": c} for c in val]},
                   model.validation_summary(fold))
    return model.path


@pytest.fixture
def cv(hiennu_roots):
    """A raw dataset of 9 cases in 3 folds and the CV of two models, A (3d_fullres) and B (3d_lowres)."""
    raw = hiennu_roots["hiennu_raw"] / DATASET
    results = hiennu_roots["hiennu_results"]
    cases = {f"case{i}": i for i in range(9)}
    for case, i in cases.items():
        adc = np.full(GEO.size_zyx, 1000.0, np.float32)
        adc[:, :, 0] = 0.0  # outside the brain
        zadc = np.zeros(GEO.size_zyx, np.float32)
        zadc[_label(i) == 1] = -4.0
        zadc[0, 0:2, 5:7] = -3.0  # the rule's own false positive
        write_image(adc, GEO, raw / "imagesTr" / f"{case}_0000.mha")
        write_image(zadc, GEO, raw / "imagesTr" / f"{case}_0001.mha")
        write_image(_label(i), GEO, raw / "labelsTr" / f"{case}.mha")
    save_dataset_json(DatasetJson("Tiny", num_training=9), raw)
    split = [[c for c in cases if cases[c] % 3 == k] for k in range(3)]
    write_json([{"train": sorted(set(cases) - set(val)), "val": val} for val in split],
               hiennu_roots["hiennu_preprocessed"] / DATASET / "splits_final.json")
    for name in (A, B):
        _write_model(results, name, split, cases)
    return results / DATASET


def _splits(cv: Path) -> tuple[list[list[str]], dict[str, int]]:
    cases = {f"case{i}": i for i in range(9)}
    return [[c for c in cases if cases[c] % 3 == k] for k in range(3)], cases


def _replace_model(cv: Path, name: str, probabilities) -> None:
    """Write model ``name`` anew (over any existing folder) with ``probabilities``."""
    shutil.rmtree(cv / name, ignore_errors=True)
    _write_model(cv.parent, name, *_splits(cv), probabilities=probabilities)


def _run(*argv: str) -> list[str]:
    return ["-d", "Tiny", "-c", "3d_fullres", "3d_lowres", "-tr", "TrainerX", "-f", "0", "1", "2", "-np", "1", *argv]


def _written(dataset_results: Path) -> set[str]:
    """Everything find_best_configuration may write (or leave behind) under the dataset's results."""
    found = {p.name for p in dataset_results.iterdir() if p.name.startswith(".") or p.name in
             (INFERENCE_INFORMATION_FILE, "ensembles")}
    return found | {p.name for p in dataset_results.glob("*/postprocessing.json")}


# ------------------------------------------------------------------------------------------ averaging and choice

def test_the_ensemble_mean_is_exact_and_thresholded_at_one_half():
    a = np.array([0.4, 0.3, 0.9, 0.0], np.float32).reshape(1, 1, 4)
    b = np.array([0.6, 0.6, 0.0, 0.2], np.float32).reshape(1, 1, 4)
    mean = mean_probabilities([a, b])
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean.ravel(), [0.5, 0.45, 0.45, 0.1], rtol=0, atol=1e-7)
    assert cv_mask(mean).ravel().tolist() == [1, 0, 0, 0]  # p >= 0.5 is lesion
    three = mean_probabilities([a, b, np.ones_like(a)])
    np.testing.assert_allclose(three.ravel(), [2 / 3, 1.9 / 3, 1.9 / 3, 1.2 / 3], atol=1e-6)


def test_every_ensemble_of_two_or_more_is_a_candidate():
    names = [c.name for c in candidates(["m__p__a", "m__p__b", "m__p__c"])]
    assert names[:3] == ["m__p__a", "m__p__b", "m__p__c"]
    assert names[3:] == ["ensemble___m__p__a___m__p__b", "ensemble___m__p__a___m__p__c",
                         "ensemble___m__p__b___m__p__c", "ensemble___m__p__a___m__p__b___m__p__c"]
    assert [c.name for c in candidates(["m__p__a", "m__p__b"], ensembles=False)] == ["m__p__a", "m__p__b"]
    assert Candidate(("m__p__b", "m__p__a")).members == ("m__p__a", "m__p__b")


def test_only_the_ensemble_of_all_models_or_none_is_a_candidate_when_asked():
    three = ["m__p__a", "m__p__b", "m__p__c"]
    assert [c.name for c in candidates(three, "all")] == [*three, "ensemble___m__p__a___m__p__b___m__p__c"]
    assert [c.name for c in candidates(["m__p__a"], "all")] == ["m__p__a"]
    assert [c.name for c in candidates(three, "none")] == three
    assert len(candidates(three, "every")) == len(candidates(three, True)) == 7
    with pytest.raises(HiennuError, match=r"--ensembles must be one of every, all, none, got 'some'"):
        candidates(three, "some")
    with pytest.raises(HiennuError, match=r"--ensembles must be one of"):
        FindBestOptions("Tiny", models=["m__p__a"], ensembles="pairs")
    assert FindBestOptions("Tiny", models=["m__p__a"], ensembles=False).ensembles == "none"


def _scores(name, members, dice, nested=None):
    post = None if nested is None else {"chosen_name": "none", "nested": {"dice": {"mean": nested}}}
    return candidate_scores(name, "ensemble" if len(members) > 1 else "model", members, name,
                            {"dice": {"mean": dice}, "masd": {"mean": 1.0}, "nsd": {"mean": 0.5}}, post)


def test_the_raw_choice_is_the_best_mean_dice_then_fewer_members_then_the_name():
    a, b = _scores("T__P__b", ["T__P__b"], 0.7), _scores("T__P__a", ["T__P__a"], 0.7)
    ens = _scores("ensemble___T__P__a___T__P__b", ["T__P__a", "T__P__b"], 0.7)
    assert choose_best([ens, a, b], "raw").name == "T__P__a"                 # a tie: fewer members, then the name
    assert choose_best([a, _scores("ens", ["T__P__a", "T__P__b"], 0.71)], "raw").name == "ens"  # better Dice wins
    assert choose_best([_scores("x", ["x"], 0.2), a], "raw").name == "T__P__b"


def test_the_default_choice_is_the_nested_dice_with_postprocessing_then_raw_dice_members_name():
    ens = _scores("ensemble___T__P__a___T__P__b", ["T__P__a", "T__P__b"], 0.50, nested=0.51)
    a = _scores("T__P__a", ["T__P__a"], 0.49, nested=0.61)
    assert choose_best([ens, a]).name == "T__P__a" and choose_best([ens, a], "raw").name == ens.name
    b = _scores("T__P__b", ["T__P__b"], 0.55, nested=0.61)
    assert choose_best([ens, a, b]).name == "T__P__b"                          # a tie: the raw Dice
    c = _scores("T__P__c", ["T__P__c"], 0.55, nested=0.61)
    both = _scores("ensemble___T__P__b___T__P__c", ["T__P__b", "T__P__c"], 0.55, nested=0.61)
    assert choose_best([both, c, b]).name == "T__P__b"                         # then fewer members, then name
    without = _scores("T__P__d", ["T__P__d"], 0.9)                            # no nested estimate: ranks last
    assert choose_best([without, ens]).name == ens.name
    with pytest.raises(HiennuError, match="--select-by must be one of postprocessed, raw"):
        choose_best([a], "pooled")


def test_the_predict_command():
    chosen = ChosenConfiguration(A, "model", (A,), (0, 1, 2, 3, 4), FINAL, A, {})
    assert predict_command(DATASET, chosen, Path("/r")) == (
        f"hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {DATASET} -tr TrainerX -c 3d_fullres -p hiennuPlans "
        f"-f 0 1 2 3 4")  # always named: without -f a fold_all would join the five scored folds
    chosen = dataclasses.replace(chosen, folds=(0, 1), checkpoint=BEST)
    assert predict_command(DATASET, chosen, Path("/r")).endswith("-p hiennuPlans -f 0 1 -chk best")
    chosen = ChosenConfiguration("ensemble", "ensemble", (A, B), (0, 1, 2, 3, 4), FINAL, "ensembles/e", {})
    assert predict_command(DATASET, chosen, Path("/r")) == (
        f"hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m /r/{A} /r/{B}")


# ------------------------------------------------------------------------------------------ the whole run

def test_the_ensemble_wins_and_everything_is_written(cv, capsys):
    assert cli.main(_run()) == 0
    out = capsys.readouterr().out
    folder = EnsembleFolder.of(cv, [B, A])
    info = load_inference_information(cv)
    by_name = {c.name: c for c in info.candidates}
    assert set(by_name) == {A, B, folder.path.name}
    # by hand: each model alone has a 4-voxel false positive on every case, the ensemble none
    assert by_name[folder.path.name].mean("dice") == 1.0
    assert by_name[A].mean("dice") == pytest.approx((6 * 64 / 68 + 3 * 0.0) / 9)
    assert by_name[B].mean("dice") == by_name[A].mean("dice")
    assert info.chosen.name == folder.path.name and info.chosen.kind == "ensemble"
    assert info.chosen.members == (A, B) and info.chosen.folds == (0, 1, 2) and info.chosen.checkpoint == FINAL
    assert info.reference is not None and info.reference.name == "rule: ZADC < -2"
    assert 0 < info.reference.mean("dice") < 1
    # the ensemble's CV masks: the label, case by case, on the label's grid
    for i in range(9):
        mask, geometry = read_image(folder.validation_dir / f"case{i}.mha", dtype=np.uint8)
        expected = cv_mask(mean_probabilities([_probabilities(A, i), _probabilities(B, i)]))
        assert np.array_equal(mask, expected) and np.array_equal(mask, _label(i))
        assert not geometry.differences(GEO)
    assert json.loads(folder.members.read_text()) == {"members": [A, B], "folds": [0, 1, 2], "checkpoint": FINAL}
    summary = json.loads(folder.validation_summary.read_text())
    assert summary["num_cases"] == 9 and summary["metrics"]["dice"]["mean"] == 1.0
    record = json.loads(folder.postprocessing.read_text())
    assert record["chosen_name"] == "none" and record["num_cases"] == 9
    assert info.chosen.postprocessing["record"] == f"ensembles/{folder.path.name}/postprocessing.json"
    assert info.chosen.postprocessing["nested"]["dice"]["mean"] == 1.0
    # the file reads back to what the run returned, and the command is printed as written
    raw = json.loads((cv / INFERENCE_INFORMATION_FILE).read_text())
    assert raw["predict_command"] == (f"hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {cv.resolve() / A} "
                                      f"{cv.resolve() / B}")
    assert f"  {raw['predict_command']}\n" in out
    assert re.search(r"\| \*\*ensemble___.*\*\* \(chosen\) \| ensemble \| 1\.0000 \[1\.0000, 1\.0000\] "
                     r"\| 0\.00 \(9\)", out)
    assert "| rule: ZADC < -2 (reference, never chosen) | rule |" in out
    assert "by the highest nested mean Dice with the candidate's own post-processing" in out
    assert "the best of 3 candidates chosen on the same cases" in out
    assert not any(p.name.startswith(".") for p in cv.iterdir())  # no staging left behind
    # every candidate has its own post-processing; the model folders took theirs (they had none)
    for name in (A, B):
        model_record = json.loads(ModelFolder(cv / name).postprocessing.read_text())
        assert model_record["chosen"]["min_component_voxels"] >= 5          # the 4-voxel false positives go
        post = by_name[name].postprocessing
        assert post["record"] == f"{name}/postprocessing.json" and post["action"] == "written"
        assert post["nested"]["dice"]["mean"] == 1.0 and post["chosen_name"] == model_record["chosen_name"]
    # all tie at 1.0 with post-processing: the raw Dice decides, so nnU-Net's rule agrees here
    assert info.selection.criterion == "postprocessed" and info.selection.num_candidates == 3
    assert info.selection.by_raw == info.selection.by_postprocessed == folder.path.name


def test_a_single_model_gets_its_postprocessing_once_and_an_existing_one_is_kept(cv, capsys):
    options = FindBestOptions("Tiny", ["3d_fullres"], ["TrainerX"], folds=[0, 1, 2], num_processes=1)
    first = find_best_configuration(options)
    path = ModelFolder(cv / A).postprocessing
    assert first.information.chosen.kind == "model" and first.postprocessing.action == "written"
    record = json.loads(path.read_text())
    assert record["chosen"]["min_component_voxels"] >= 5  # the 4-voxel false positives go
    assert first.information.chosen.postprocessing["pooled"]["dice"]["mean"] > first.information.candidates[0].mean()
    assert first.information.predict_command.endswith(
        f"-d {DATASET} -tr TrainerX -c 3d_fullres -p hiennuPlans -f 0 1 2")
    before = path.read_bytes()
    assert find_best_configuration(options).postprocessing.action.startswith("identical")
    assert path.read_bytes() == before
    # a record of an older version (no num_candidates) with the same choice is the same choice
    older = {k: v for k, v in record.items() if k != "num_candidates"}
    older["nested"] = {k: v for k, v in record["nested"].items() if k != "num_candidates"}
    write_json(older, path)
    before = path.read_bytes()
    assert find_best_configuration(options).postprocessing.action == "identical choice already there"
    assert path.read_bytes() == before
    # the same name, another parameter in one fold's nested choice: another choice, kept and said
    other = json.loads(json.dumps(record))
    other["nested"]["chosen_per_fold"]["0"]["min_component_voxels"] = 6
    write_json(other, path)
    assert cli.main(["-d", "Tiny", "-c", "3d_fullres", "-tr", "TrainerX", "-f", "0", "1", "2", "-np", "1"]) == 0
    assert "this run chooses the same by name, with other parameters" in capsys.readouterr().out
    record["chosen"] = {"min_component_voxels": 50}
    record["chosen_name"] = "remove < 50 vox"
    write_json(record, path)
    assert cli.main(["-d", "Tiny", "-c", "3d_fullres", "-tr", "TrainerX", "-f", "0", "1", "2", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert json.loads(path.read_text())["chosen_name"] == "remove < 50 vox"
    assert "kept the existing record" in out and "this run would choose remove < 5 vox" in out
    info = load_inference_information(cv)
    assert info.chosen.postprocessing["chosen_name"] == "remove < 50 vox"
    assert not (cv / "ensembles").exists()


def test_inference_information_round_trips_with_the_rule_and_the_paired_test(cv):
    result = find_best_configuration(FindBestOptions("Tiny", ["3d_fullres", "3d_lowres"], ["TrainerX"],
                                                     folds=[0, 1, 2], num_processes=1))
    assert load_inference_information(cv) == result.information
    again = json.loads(json.dumps(result.information.to_dict()))
    raw = json.loads((cv / INFERENCE_INFORMATION_FILE).read_text())
    assert again == raw
    # the rule got the same nested post-processing, on the folds of splits_final.json, and is never written
    rule = raw["reference"]["postprocessing"]
    assert rule["record"] is None and rule["action"] == "reference, not written"
    assert set(rule["nested_choices"]) == {"0", "1", "2"} and rule["nested"]["dice"]["n"] == 9
    assert rule["chosen_name"] == "remove < 5 vox"                  # the rule's 4-voxel false positive goes
    test = raw["paired_test"]
    assert test["method"] == f"{raw['chosen']['name']} + post-processing (nested)"
    assert test["reference"] == "rule: ZADC < -2 + post-processing (nested)" and test["num_cases"] == 9
    assert [r["metric"] for r in test["rows"]] == ["dice", "masd", "nsd"]
    assert all(r["n_pairs"] == 9 and r["mean_difference"] == 0.0 and r["p_holm"] == 1.0 for r in test["rows"])
    assert raw["selection"] == {**raw["selection"], "criterion": "postprocessed", "num_candidates": 3}
    assert all(c["postprocessing"]["nested"] is not None for c in raw["candidates"])


def test_an_inference_information_of_an_older_run_still_loads(cv):
    """Files written before every candidate had its post-processing: chosen by raw Dice, no paired test."""
    result = find_best_configuration(FindBestOptions("Tiny", ["3d_fullres", "3d_lowres"], ["TrainerX"],
                                                     folds=[0, 1, 2], num_processes=1))
    old = result.information.to_dict()
    for key in ("selection", "paired_test", "postprocessing_metrics"):
        del old[key]
    for candidate in old["candidates"] + [old["reference"]]:
        del candidate["postprocessing"]
    write_json(old, cv / INFERENCE_INFORMATION_FILE)
    info = load_inference_information(cv)
    assert info.selection == Selection("raw", 3, None, info.chosen.name) and info.paired_test is None
    assert all(c.postprocessing is None for c in info.candidates) and info.chosen == result.information.chosen


# ------------------------------------------------------------------------------------------ the choice on real runs

def test_the_nested_postprocessed_choice_differs_from_nnunets_raw_choice(cv, capsys):
    """B misses part of every lesion: the best raw Dice (nnU-Net ships it), but post-processing cannot add the
    missed voxels, while A's false positives go with post-processing, so A ships by default."""
    _replace_model(cv, B, _under_segmenting)
    assert cli.main(_run()) == 0
    out = capsys.readouterr().out
    info = load_inference_information(cv)
    by_name = {c.name: c for c in info.candidates}
    ensemble = EnsembleFolder.of(cv, [A, B]).path.name
    assert by_name[B].mean("dice") == pytest.approx((6 * 48 / 56 + 3) / 9)
    assert by_name[A].mean("dice") == pytest.approx(6 * 64 / 68 / 9)
    assert by_name[ensemble].mean("dice") == pytest.approx(by_name[B].mean("dice"))  # the mean drops A's false positive
    assert by_name[A].nested_mean("dice") == 1.0
    assert by_name[B].nested_mean("dice") == pytest.approx(by_name[B].mean("dice"))
    assert info.chosen.name == A and info.selection.by_raw == B and info.selection.by_postprocessed == A
    assert "by raw Dice (nnU-Net's rule, --select-by raw) the choice would be " + B in out
    assert info.predict_command.endswith(f"-d {DATASET} -tr TrainerX -c 3d_fullres -p hiennuPlans -f 0 1 2")
    # the paired test is of the chosen one (A + its nested post-processing) against the rule + its own
    assert info.paired_test.method == f"{A} + post-processing (nested)"
    # nnU-Net's rule, on request: the old choice
    assert cli.main(_run("--select-by", "raw")) == 0
    out = capsys.readouterr().out
    info = load_inference_information(cv)
    assert info.chosen.name == B and info.selection.criterion == "raw" and info.selection.by_postprocessed == A
    assert "by the highest raw mean Dice, without post-processing (nnU-Net's rule)" in out
    assert ("by nested Dice with post-processing (the default, --select-by postprocessed) the choice would be "
            + A) in out
    assert info.paired_test.method == f"{B} + post-processing (nested)"


def test_every_ensemble_folder_gets_its_postprocessing_and_a_kept_model_record_is_reported(cv, capsys):
    """Four models (two trainers, two configurations), eleven ensembles: each folder holds its own record, chosen
    on its masks, so any of them predicts with it; a model's different existing record is kept, scored as in
    force, and said."""
    for name in (C, D):
        _write_model(cv.parent, name, *_splits(cv), probabilities=_under_segmenting)
    edited = json.loads(json.dumps(find_best_configuration(FindBestOptions(
        "Tiny", ["3d_lowres"], ["TrainerX"], folds=[0, 1, 2], num_processes=1)).postprocessing.record))
    edited.update(chosen={"min_component_voxels": 50}, chosen_name="remove < 50 vox")  # also removes the lesions
    write_json(edited, ModelFolder(cv / B).postprocessing)
    (cv / INFERENCE_INFORMATION_FILE).unlink()
    assert cli.main(_run("-tr", "TrainerX", "TrainerY")) == 0
    out = capsys.readouterr().out
    info = load_inference_information(cv)
    ensembles = [c for c in info.candidates if c.kind == "ensemble"]
    assert len(info.candidates) == 15 and len(ensembles) == 11 and info.selection.num_candidates == 15
    assert "the best of 15 candidates" in out
    for c in ensembles:
        folder = EnsembleFolder.of(cv, list(c.members))
        record = json.loads(folder.postprocessing.read_text())
        assert record["num_cases"] == 9 and record["nested"]["choices"].keys() == {"0", "1", "2"}
        assert c.postprocessing["record"] == f"ensembles/{folder.path.name}/postprocessing.json"
        assert c.postprocessing["chosen_name"] == record["chosen_name"] and c.postprocessing["action"] == "written"
        assert json.loads(folder.members.read_text())["members"] == list(c.members)
    b = next(c for c in info.candidates if c.name == B)
    assert json.loads(ModelFolder(cv / B).postprocessing.read_text())["chosen_name"] == "remove < 50 vox"
    assert b.postprocessing["action"] == "kept the existing record" and b.postprocessing["chosen_name"] == (
        "remove < 50 vox")
    assert b.postprocessing["this_run_choice"] == "remove < 5 vox"
    assert b.postprocessing["pooled"]["dice"]["mean"] == pytest.approx(3 / 9)     # the record in force: lesions gone
    assert (f"kept {B}/postprocessing.json (remove < 50 vox); this run would choose remove < 5 vox: delete the "
            f"file and run again to replace it") in out
    for name in (C, D):
        assert json.loads(ModelFolder(cv / name).postprocessing.read_text())["chosen_name"] == "none"


# ------------------------------------------------------------------------------------------ bad input

def _break_fold(cv: Path) -> None:
    shutil.rmtree(cv / B / "fold_2")


def _break_npz(cv: Path) -> None:
    (cv / B / "fold_1" / "validation" / "case4.npz").unlink()


def _break_splits(cv: Path) -> None:
    """B's case 3 validated in fold 1 instead of fold 0 (other splits)."""
    model = ModelFolder(cv / B)
    for suffix in (".npz", ".mha"):
        (model.validation_dir(0) / f"case3{suffix}").rename(model.validation_dir(1) / f"case3{suffix}")
    for fold, change in ((0, lambda cases: [c for c in cases if c != "case3"]), (1, lambda cases: cases + ["case3"])):
        summary = json.loads(model.validation_summary(fold).read_text())
        summary["per_case"] = [{"case_id": c} for c in change([r["case_id"] for r in summary["per_case"]])]
        write_json(summary, model.validation_summary(fold))


def _break_dataset(cv: Path) -> None:
    save_dataset_json(DatasetJson("Tiny", channel_names=["ADC", "T2"]), ModelFolder(cv / B).dataset_json)


def _break_checkpoint(cv: Path) -> None:
    for fold in range(3):
        summary = json.loads(ModelFolder(cv / B).validation_summary(fold).read_text())
        write_json({**summary, "checkpoint": BEST}, ModelFolder(cv / B).validation_summary(fold))


def _break_postprocessing_record(cv: Path) -> None:
    """B's postprocessing.json cannot be applied: found while choosing the candidates' post-processing, after
    the ensembles' masks were staged."""
    write_json({"chosen": {"min_component_voxels": -3}, "chosen_name": "?"}, ModelFolder(cv / B).postprocessing)


def _break_mask(cv: Path) -> None:
    path = cv / A / "fold_2" / "validation" / "case8.mha"
    mask, geometry = read_image(path, dtype=np.uint8)
    mask[0, 0, 0] = 1
    write_image(mask, geometry, path)


def _break_unfinished(cv: Path) -> None:
    """B's fold 1 killed before its end: no checkpoint_final.pth and no validation (--val would refuse it)."""
    (ModelFolder(cv / B).fold_dir(1) / "checkpoint_final.pth").unlink(missing_ok=True)
    shutil.rmtree(ModelFolder(cv / B).validation_dir(1))


def _break_validation(cv: Path) -> None:
    """B's fold 1 trained to its end, its validation gone."""
    (ModelFolder(cv / B).fold_dir(1) / "checkpoint_final.pth").write_bytes(b"")
    shutil.rmtree(ModelFolder(cv / B).validation_dir(1))


def _break_probabilities(cv: Path) -> None:
    path = ModelFolder(cv / A).validation_probabilities(1, "case4")
    path.write_bytes(path.read_bytes()[:100])


def _break_image(cv: Path) -> None:
    path = cv.parents[1] / "hiennu_raw" / DATASET / "imagesTr" / "case5_0000.mha"
    image, geometry = read_image(path)
    image[1, 2, 3] = np.inf
    write_image(image, geometry, path)


@pytest.mark.parametrize("breaking, message", [
    (_break_unfinished, rf"error: model {B}, fold 1: its training has not finished \(no checkpoint_final\.pth, no "
                        r"validation\); finish it: hiennu_train Tiny TrainerX 1 -c 3d_lowres --continue --npz$"),
    (_break_validation, rf"error: model {B}, fold 1: no validation \(.*summary\.json not found\); validate it with "
                        r"probabilities: hiennu_train Tiny TrainerX 1 -c 3d_lowres --val --npz$"),
    (_break_probabilities, rf"error: model {A}, fold 1, case case4: .*case4\.npz is not a probability map .*; "
                           r"re-validate: hiennu_train Tiny TrainerX 1 -c 3d_fullres --val --npz$"),
    (_break_image, r"error: case case5: image .*case5_0000\.mha has 0 NaN and 1 infinite voxel\(s\); replace them"),
    (_break_fold, rf"error: model {B}, fold 2: .*fold_2 not found; train it: hiennu_train Tiny TrainerX 2 -c 3d_lowres "
                  r"--npz$"),
    (_break_npz, rf"error: model {B}, fold 1, case case4: no probabilities .*case4\.npz \(its validation kept none\); "
                 r"re-validate with them: hiennu_train Tiny TrainerX 1 -c 3d_lowres --val --npz$"),
    (_break_splits, rf"error: model {B}, fold 0: validated other cases than {A}'s fold 0 \(missing: case3\); the two "
                    r"were trained on different splits; retrain it on .*splits_final\.json: mv \S+/fold_0 \S+/fold_0\.old "
                    r"&& hiennu_train Tiny TrainerX 0 -c 3d_lowres --npz$"),
    (_break_dataset, rf"error: model {B} was trained on another dataset than {A} \(channel_names \['ADC', 'ZADC'\] vs "
                     r"\['ADC', 'T2'\]\); retrain it on Dataset001_Tiny: mv \S+/fold_0 \S+/fold_0\.old && hiennu_train "
                     r"Tiny TrainerX 0 -c 3d_lowres --npz \(and every other fold\)"),
    (_break_checkpoint, rf"error: model {B} was validated with checkpoint_best\.pth, {A} with checkpoint_final\.pth; "
                        r"re-validate its folds alike, e\.g\. hiennu_train Tiny TrainerX 0 -c 3d_lowres --val --npz$"),
    (_break_postprocessing_record, rf"error: .*{B}/postprocessing\.json: min_component_voxels must be a whole "
                                   r"number >= 0, got -3; delete it and run again to choose it anew$"),
    (_break_mask, rf"error: model {A}, fold 2, case case8: validation mask .*case8\.mha differs from its probabilities "
                  r">= 0\.5 in 1 voxel\(s\).*re-validate: hiennu_train Tiny TrainerX 2 -c 3d_fullres --val --npz$"),
])
def test_bad_input_is_one_line_with_the_fix_and_nothing_is_written(cv, capsys, breaking, message):
    breaking(cv)
    before = _written(cv)
    assert cli.main(_run("-q")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert _written(cv) == before == ({"postprocessing.json"} if breaking is _break_postprocessing_record else set())


def test_a_missing_model_or_fold_of_the_split_is_named(cv):
    with pytest.raises(HiennuError, match=r"TrainerY__hiennuPlans__3d_fullres: .* not found; train its folds with "
                                          r"probabilities, e\.g\. hiennu_train Tiny TrainerY 0 -c 3d_fullres --npz"):
        find_best_configuration(FindBestOptions("Tiny", ["3d_fullres"], ["TrainerY"], folds=[0, 1, 2]))
    with pytest.raises(HiennuError, match=r"splits_final\.json: has 3 folds, fold\(s\) 3, 4 do not exist"):
        find_best_configuration(FindBestOptions("Tiny", ["3d_fullres"], ["TrainerX"]))
    assert _written(cv) == set()


def test_a_split_whose_folds_share_a_validation_case_is_refused(cv, hiennu_roots):
    """A damaged splits_final.json that holds case0 out in two folds: the rule's reference (which reads its folds
    from the split alone) would score it with one fold's choice and fit the other's on it; refused, naming it."""
    from hiennu.ensembling.cv_probabilities import split_validation_cases
    path = hiennu_roots["hiennu_preprocessed"] / DATASET / "splits_final.json"
    splits = json.loads(path.read_text())
    assert split_validation_cases(path.parent, [0, 1, 2])[0] == ["case0", "case3", "case6"]
    splits[1]["val"].append("case0")
    write_json(splits, path)
    with pytest.raises(HiennuError, match=r"splits_final\.json: case case0 is a validation case of fold 0 and of "
                                          r"fold 1; the folds must hold out disjoint cases"):
        split_validation_cases(path.parent, [0, 1, 2])
    assert cli.main(_run("-q")) == 1 and _written(cv) == set()
    splits[1]["val"].remove("case0")
    splits[0]["val"].append("case0")  # twice within one fold
    write_json(splits, path)
    with pytest.raises(HiennuError, match=r"case case0 is a validation case of fold 0 and of fold 0"):
        split_validation_cases(path.parent, [0])


def test_models_named_with_m_need_not_be_every_combination(cv, capsys):
    # two trainers on 3d_fullres, one on 3d_lowres: -c/-tr would need TrainerY on 3d_lowres as well
    _write_model(cv.parent, C, *_splits(cv), probabilities=_under_segmenting)
    with pytest.raises(HiennuError, match=rf"{D}: .* not found"):
        find_best_configuration(FindBestOptions("Tiny", ["3d_fullres", "3d_lowres"], ["TrainerX", "TrainerY"],
                                                folds=[0, 1, 2], num_processes=1))
    with pytest.raises(HiennuError, match=r"-m names the models: leave out -c, -tr and -p"):
        FindBestOptions("Tiny", ["3d_fullres"], models=[A])
    assert FindBestOptions("Tiny", models=[A, C]).model_names() == [A, C]
    before = sorted(str(p) for p in cv.rglob("*"))
    assert cli.main(["-d", "Tiny", "-m", A, B, C, A, "-f", "0", "1", "2", "-np", "1"]) == 1  # a typo is not dropped
    assert f"-m: {A} named twice; name each model once" in capsys.readouterr().err
    assert sorted(str(p) for p in cv.rglob("*")) == before
    argv = ["-d", "Tiny", "-m", A, B, C, "-f", "0", "1", "2", "-np", "1"]
    assert cli.main(argv) == 0
    info = load_inference_information(cv)
    ensembles = [EnsembleFolder.of(cv, members).path.name for members in ([A, B], [A, C], [B, C], [A, B, C])]
    assert {c.name for c in info.candidates} == {A, B, C, *ensembles}
    assert info.selection.num_candidates == 7
    assert info.provenance["options"]["models"] == [A, B, C]
    assert info.provenance["options"]["trainers"] == ["TrainerX", "TrainerY"]
    assert info.provenance["options"]["configurations"] == ["3d_fullres", "3d_lowres"]
    # by hand, as above: C misses 8 of 32 voxels of each lesion and has no false positive
    assert {c.name: c for c in info.candidates}[C].mean("dice") == pytest.approx((6 * 48 / 56 + 3 * 1.0) / 9)



def test_postprocessing_candidates_cap_filter_reach_every_candidate_the_rule_and_the_nested_choice(cv, capsys):
    argv = _run("--postprocessing-candidates", "cap-filter", "--nested-choice")
    assert cli.main(argv) == 0
    info = load_inference_information(cv)
    assert info.provenance["options"]["postprocessing_candidates"] == "cap-filter"
    folder = EnsembleFolder.of(cv, [A, B])
    for path in (ModelFolder(cv / A).postprocessing, ModelFolder(cv / B).postprocessing, folder.postprocessing):
        record = json.loads(path.read_text())
        assert record["candidate_set"] == "cap-filter" and record["num_candidates"] <= 2
    assert info.nested_choice is not None and info.nested_choice.num_candidates == 3
    with pytest.raises(HiennuError, match=r"post-processing candidates must be one of all, cap-filter"):
        FindBestOptions("Tiny", models=[A], postprocessing_candidates="few")


def test_judged_rule_asks_each_model_its_own_and_each_ensemble_its_mean_probabilities(cv, capsys):
    """--postprocessing-candidates judged-rule: every model and the ensemble get the rule's components judged by a
    filter that asks the network, the ensemble's fitted on its members' mean probabilities; the rule, with no network
    to ask, gets cap-filter (the same recipe without the network)."""
    from hiennu.postprocessing.lesion_filter import FEATURES_WITH_PROBABILITY
    from hiennu.postprocessing.selection import select_on_masks

    def b_marks_the_rules_false_positive(model, i):
        prob = _probabilities(model, i)
        prob[0, 0:2, 5:7] = 0.6   # where the rule has its own false positive; A says 0.05 there
        return prob

    _replace_model(cv, B, b_marks_the_rules_false_positive)
    assert cli.main(_run("--postprocessing-candidates", "judged-rule", "--nested-choice")) == 0
    out = capsys.readouterr().out
    info = load_inference_information(cv)
    assert info.provenance["options"]["postprocessing_candidates"] == "judged-rule"
    folder = EnsembleFolder.of(cv, [A, B])
    records = {n: json.loads(p.read_text()) for n, p in
               ((A, ModelFolder(cv / A).postprocessing), (B, ModelFolder(cv / B).postprocessing),
                ("ensemble", folder.postprocessing))}
    for record in records.values():  # none, and the one recipe (the ensemble, perfect raw, keeps none)
        none, judged = record["candidates"]
        assert record["candidate_set"] == "judged-rule" and judged["start_from_rule"] is True
        assert judged["component_filter"]["features"] == list(FEATURES_WITH_PROBABILITY)
        assert judged["cv_dice"] == pytest.approx(1.0)   # the rule's false positive is judged away
    assert records[A]["chosen"] == {k: v for k, v in records[A]["candidates"][1].items()
                                    if k not in ("name", "cv_dice", "improvement")}
    split, cases = _splits(cv)
    fold_of = {c: k for k, val in enumerate(split) for c in val}
    raw = cv.parents[1] / "hiennu_raw" / DATASET
    masks = {c: folder.path / "validation" / f"{c}.mha" for c in fold_of}
    both = {c: (ModelFolder(cv / A).validation_probabilities(fold_of[c], c),
                ModelFolder(cv / B).validation_probabilities(fold_of[c], c)) for c in fold_of}
    again = select_on_masks(masks, fold_of, raw, 0, {}, folder.path, candidate_set="judged-rule", probabilities=both)
    assert again["candidates"] == records["ensemble"]["candidates"]
    only_a = {c: both[c][:1] for c in fold_of}
    assert select_on_masks(masks, fold_of, raw, 0, {}, folder.path, candidate_set="judged-rule",
                           probabilities=only_a)["candidates"] != records["ensemble"]["candidates"]
    rule_row = next(line for line in out.splitlines() if line.startswith("| rule: ZADC < -2"))
    assert "lesion filter" in rule_row and "asking the network" not in rule_row and "components" not in rule_row


def test_a_judged_rule_record_kept_in_a_model_folder_is_scored_by_a_later_run_of_another_candidate_set(cv, capsys):
    """The README's sequence: find_best with judged-rule writes the models' records; a later run with the default
    candidates keeps them and scores them, which needs the folds' probabilities (it stopped, saying there were none)."""
    assert cli.main(_run("--postprocessing-candidates", "judged-rule")) == 0
    judged = {m: json.loads(ModelFolder(cv / m).postprocessing.read_text()) for m in (A, B)}
    assert all(r["candidate_set"] == "judged-rule" for r in judged.values())
    capsys.readouterr()
    for candidate_set in ("all", "cap-filter"):
        assert cli.main(_run("--postprocessing-candidates", candidate_set)) == 0, capsys.readouterr().err
        for m in (A, B):  # kept, not replaced
            assert json.loads(ModelFolder(cv / m).postprocessing.read_text()) == judged[m]


def test_the_rule_as_a_candidate_wins_over_models_that_miss_lesion_and_ships_as_a_rule_folder(cv, capsys, tmp_path):
    """Both models miss a quarter of every lesion, which no post-processing adds back; the rule finds every lesion
    voxel and its one false positive (4 voxels) goes with post-processing. Without --rule-candidate the rule is only
    the reference and nothing is written for it; with it, the rule is chosen, written as a rule folder, the best
    model is tested against it, and the printed command predicts the rule + its post-processing."""
    _replace_model(cv, A, _under_segmenting)
    _replace_model(cv, B, _under_segmenting)
    assert cli.main(_run("--no-ensembles")) == 0
    info = load_inference_information(cv)
    assert info.chosen.kind == "model" and info.reference.path is None and not (cv / "baseline_zadc").exists()
    capsys.readouterr()
    assert cli.main(_run("--no-ensembles", "--rule-candidate", "--nested-choice")) == 0
    out = capsys.readouterr().out
    info = load_inference_information(cv)
    folder = cv / "baseline_zadc"
    assert info.chosen.kind == "rule" and info.chosen.path == "baseline_zadc" and info.chosen.checkpoint is None
    assert info.selection.num_candidates == 3 and info.reference.nested_mean("dice") == 1.0
    assert info.chosen.postprocessing["record"] == "baseline_zadc/postprocessing.json"
    assert info.chosen.postprocessing["action"] == "written"
    assert info.paired_test.method == f"{A} + post-processing (nested)"  # A and B tie; A by name
    assert info.paired_test.rows[0]["mean_difference"] < 0
    assert set(info.nested_choice.choices.values()) == {"rule: ZADC < -2"}
    assert "**(chosen)**" in out and f"-m {folder.resolve()}" in out
    rule = load_rule_folder(folder)
    record = json.loads((folder / "postprocessing.json").read_text())
    assert record["candidate_set"] == "all" and rule.postprocessing == postprocessing_from_record(record, "r")
    assert rule.dataset.channel_names == ["ADC", "ZADC"]
    # the printed command predicts the rule with that post-processing
    images = tmp_path / "in"
    images.mkdir()
    raw = cv.parent.parent / "hiennu_raw" / DATASET
    for k in (0, 1):
        shutil.copy(raw / "imagesTr" / f"case0_000{k}.mha", images / f"case0_000{k}.mha")
    argv = shlex.split(info.predict_command.replace("INPUT_FOLDER", str(images)).replace(
        "OUTPUT_FOLDER", str(tmp_path / "out")))
    assert argv[0] == "hiennu_predict" and predict_cli.main(argv[1:] + ["-q"]) == 0
    mask = read_image(tmp_path / "out" / "case0.mha", dtype=np.uint8)[0]
    assert np.array_equal(mask, read_image(raw / "labelsTr" / "case0.mha", dtype=np.uint8)[0])


def test_ensembles_all_scores_the_ensemble_of_every_model_and_no_subset(cv, capsys):
    _write_model(cv.parent, C, *_splits(cv), probabilities=_under_segmenting)
    assert cli.main(["-d", "Tiny", "-m", A, B, C, "-f", "0", "1", "2", "-np", "1", "--ensembles", "all"]) == 0
    info = load_inference_information(cv)
    full = EnsembleFolder.of(cv, [A, B, C]).path.name
    assert [c.name for c in info.candidates if c.kind == "ensemble"] == [full]
    assert info.selection.num_candidates == 4
    assert info.provenance["options"]["ensembles"] == "all"
    assert sorted(p.name for p in (cv / "ensembles").iterdir()) == [full]


def test_max_ensemble_size_keeps_the_small_ensembles_and_many_ensembles_are_announced(cv, capsys, monkeypatch, caplog):
    """--max-ensemble-size 2 scores nnU-Net's pairs only; n models make 2^n - n - 1 ensembles of any size, and more
    than MANY_ENSEMBLES of them are announced, with their number and the ways to fewer, before the scoring starts."""
    from hiennu.ensembling import best_configuration, ensemble_cv
    four = ["m__p__a", "m__p__b", "m__p__c", "m__p__d"]
    pairs = [c.name for c in candidates(four, "every", max_ensemble_size=2)]
    assert pairs[:4] == four and len(pairs) == 4 + 6 and all(n.count("___") == 2 for n in pairs[4:])
    assert len(candidates(four, "every", max_ensemble_size=9)) == len(candidates(four)) == 4 + 11
    assert [ensemble_cv.count_ensembles(n) for n in (1, 2, 3, 7, 10)] == [0, 1, 4, 120, 1013]
    assert ensemble_cv.count_ensembles(10, 2) == 45 and ensemble_cv.count_ensembles(10, 3) == 165
    for bad in (1, 0, 2.5, True, "2"):
        with pytest.raises(HiennuError, match="--max-ensemble-size must be a whole number of at least 2"):
            candidates(four, "every", max_ensemble_size=bad)
    with pytest.raises(HiennuError, match="--max-ensemble-size limits --ensembles every; with --ensembles all"):
        FindBestOptions("Tiny", models=four, ensembles="all", max_ensemble_size=2)
    _write_model(cv.parent, C, *_splits(cv), probabilities=_under_segmenting)
    monkeypatch.setattr(best_configuration, "MANY_ENSEMBLES", 3)
    assert cli.main(["-d", "Tiny", "-m", A, B, C, "-f", "0", "1", "2", "-np", "1", "--max-ensemble-size", "2"]) == 0
    info = load_inference_information(cv)
    assert sorted(c.name for c in info.candidates if c.kind == "ensemble") == sorted(
        EnsembleFolder.of(cv, list(p)).path.name for p in ((A, B), (A, C), (B, C)))
    assert info.selection.num_candidates == 6 and info.provenance["options"]["max_ensemble_size"] == 2
    assert len(list((cv / "ensembles").iterdir())) == 3
    assert "ensembles to score" not in capsys.readouterr().err  # 3 pairs: not more than 3
    shutil.rmtree(cv / "ensembles")
    assert cli.main(["-d", "Tiny", "-m", A, B, C, "-f", "0", "1", "2", "-np", "1"]) == 0
    assert ("3 models make 4 ensembles to score, each with its own post-processing chosen and 9 CV masks written; "
            "for fewer: --max-ensemble-size 2 (nnU-Net's pairs: 3), --ensembles all (one ensemble of all 3) or "
            "fewer models with -m") in capsys.readouterr().err
    assert len(list((cv / "ensembles").iterdir())) == 4
    shutil.rmtree(cv / "ensembles")
    assert cli.main(["-d", "Tiny", "-m", A, B, C, "-f", "0", "1", "2", "-np", "1", "--disable_ensembling"]) == 0
    assert not (cv / "ensembles").exists() and "among the models and no ensemble; nnU-Net chooses by raw Dice among " \
        "the models and their pairs (--select-by raw --max-ensemble-size 2)" in capsys.readouterr().err
    assert cli.main(["-d", "Tiny", "-m", A, B, C, "-f", "0", "1", "2", "-np", "1", "--select-by", "raw",
                     "--max-ensemble-size", "2"]) == 0
    assert "nnU-Net chooses" not in capsys.readouterr().err  # nnU-Net's own choice: nothing to say
    try:
        code = cli.main(["-d", "Tiny", "-m", A, B, "-f", "0", "1", "2", "--max-ensemble-size", "1"])
    except SystemExit as stop:
        code = stop.code
    assert code == 1 and "--max-ensemble-size must be a whole number of at least 2" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["-m", "TrainerX_hiennuPlans_3d_fullres"], r"error: -m: TrainerX_hiennuPlans_3d_fullres is not a model folder "
                                                r"name TRAINER__PLANS__CONFIG, e\.g\. TrainerDiceFocal__hiennuPlans__2d$"),
    (["-m", A, "-tr", "TrainerX"], r"-m names each model's trainer and plans: leave out -tr and -p$"),
    (["-m", A, "-c", "3d_fullres"], r"argument -c/--configurations: not allowed with argument -m/--models$"),
    ([], r"one of the arguments -c/--configurations -m/--models is required$"),
])
def test_m_names_bad_input_in_one_line(cv, capsys, argv, message):
    try:
        code = cli.main(["-d", "Tiny", "-f", "0", "1", "2", "-np", "1", *argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, err), err
    assert _written(cv) == set()


# ------------------------------------------------------------------------------------------ hiennu_train --npz

def test_npz_needs_a_final_validation_of_a_fold():
    assert TrainingOptions(dataset="D", save_probabilities=True).save_probabilities
    for kwargs in ({"fold": "all"}, {"final_validation": False}):
        with pytest.raises(HiennuError, match="--npz"):
            TrainingOptions(dataset="D", save_probabilities=True, **kwargs)


def test_final_validation_keeps_the_probabilities_of_the_masks(hiennu_roots):
    """predict_and_score_validation with save_probabilities: CASE.npz beside each mask, exactly the mask's
    probabilities; validating again without them removes them."""
    from helpers import make_model_dir, make_varied_raw_dataset
    from hiennu.training.native_validation import (predict_and_score_validation, validation_is_current,
                                                    validation_keeps_probabilities)
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"], num_cases=3, name="Dataset001_Tiny")
    model_dir = make_model_dir(hiennu_roots["hiennu_results"], folds=(0,))
    cases = ["case00", "case01", "case02"]
    summary = predict_and_score_validation(model_dir, 0, cases, DATASET, "cpu", save_probabilities=True)
    model = ModelFolder(model_dir)
    assert summary["probabilities"] is True and validation_keeps_probabilities(model.fold_dir(0))
    assert validation_is_current(model.fold_dir(0), FINAL, True)
    for case in cases:
        with np.load(model.validation_probabilities(0, case)) as f:
            prob = f["probabilities"]
            assert set(f.files) == {"probabilities", "spacing_xyz", "origin_xyz", "direction"}
        mask, geometry = read_image(model.validation_dir(0) / f"{case}.mha", dtype=np.uint8)
        assert prob.shape == mask.shape and np.array_equal(cv_mask(prob), mask)
        assert not list(model.validation_dir(0).glob("*_prob.npz"))
    predict_and_score_validation(model_dir, 0, cases, DATASET, "cpu")
    assert not validation_keeps_probabilities(model.fold_dir(0)) and not validation_is_current(model.fold_dir(0),
                                                                                               FINAL, True)
    assert not list(model.validation_dir(0).glob("*.npz"))


def test_a_fold_trained_again_after_its_validation_is_named_not_scored(hiennu_roots):
    """The validation summary records the checkpoint's SHA-256: a fold trained again without validating kept the
    earlier masks beside new weights, which the choice by CV scored and shipped in their place."""
    import torch
    from helpers import make_model_dir, make_varied_raw_dataset
    from hiennu.ensembling.cv_probabilities import _validated_cases
    from hiennu.io.checkpoint import checkpoint_digest
    from hiennu.postprocessing.commands import check_folds
    from hiennu.training.native_validation import predict_and_score_validation, validation_is_current
    make_varied_raw_dataset(hiennu_roots["hiennu_raw"], num_cases=3, name="Dataset001_Tiny")
    model_dir = make_model_dir(hiennu_roots["hiennu_results"], folds=(0,))
    summary = predict_and_score_validation(model_dir, 0, ["case00", "case01", "case02"], DATASET, "cpu",
                                           save_probabilities=True)
    model = ModelFolder(model_dir)
    assert summary["checkpoint_sha256"] == checkpoint_digest(model.fold_dir(0) / FINAL)
    assert validation_is_current(model.fold_dir(0), FINAL, True)
    _validated_cases(model_dir, 0, DATASET)
    check_folds(model_dir, [0])
    state = torch.load(model.fold_dir(0) / FINAL, weights_only=True)
    state["epoch"] = 99  # trained again, not validated
    torch.save(state, model.fold_dir(0) / FINAL)
    assert not validation_is_current(model.fold_dir(0), FINAL, True)  # --c validates it again
    with pytest.raises(HiennuError, match=r"fold 0: its validation masks were made by an earlier "
                                          r"checkpoint_final.pth .*re-validate it: hiennu_train Tiny TrainerTest 0 .*--val"):
        _validated_cases(model_dir, 0, DATASET)
    with pytest.raises(HiennuError, match=r"fold 0: its validation masks were made by an earlier .*re-validate it: "
                                          r"hiennu_train Tiny TrainerTest 0 -c 3d_fullres --val, or leave"):
        check_folds(model_dir, [0])
    from hiennu.ensembling.cv_probabilities import collect_model_cv
    with pytest.raises(HiennuError, match=r"re-validate it: hiennu_train Tiny TrainerTest 0 -c 3d_fullres --val --npz"):
        collect_model_cv(model_dir, [0], DATASET)  # find_best's path: the command that also keeps probabilities


def test_tiny_configurations_trained_with_npz_are_compared_end_to_end(hiennu_roots, tmp_path, capsys):
    """Plan 2d and 3d_fullres on a tiny raw dataset, train two folds of each (one of them without --npz, then
    re-validated with hiennu_train --val --npz), find the best configuration and predict with the command it prints."""
    from hiennu.cli import predict, train
    from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    from test_2d_configuration import _write_raw
    _write_raw(hiennu_roots["hiennu_raw"] / "Dataset001_Tiny2d")
    plan_and_preprocess("Tiny2d", PlanAndPreprocessOptions(configurations=["2d", "3d_fullres"], plan_for="cpu",
                                                           num_processes=1))
    common = ["--epochs", "1", "--iterations-per-epoch", "1", "--num-workers", "0", "--device", "cpu", "-q"]
    for config in ("2d", "3d_fullres"):
        for fold in ("0", "1"):
            npz = [] if (config, fold) == ("2d", "1") else ["--npz"]
            assert train.main(["Tiny2d", "TrainerDiceFocal", fold, "-c", config, *common, *npz]) == 0
    argv = ["-d", "Tiny2d", "-c", "2d", "3d_fullres", "-f", "0", "1", "-np", "1"]
    assert cli.main(argv + ["-q"]) == 1
    assert "hiennu_train Tiny2d TrainerDiceFocal 1 -c 2d --val --npz" in capsys.readouterr().err
    assert train.main(["Tiny2d", "TrainerDiceFocal", "1", "-c", "2d", "--val", "--npz", *common]) == 0
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    results = hiennu_roots["hiennu_results"] / "Dataset001_Tiny2d"
    info = load_inference_information(results)
    assert len(info.candidates) == 3 and f"  {info.predict_command}\n" in out
    assert (EnsembleFolder.of(results, ["TrainerDiceFocal__hiennuPlans__2d",
                                        "TrainerDiceFocal__hiennuPlans__3d_fullres"]).members.is_file())
    # the printed command predicts with the chosen configuration
    images = hiennu_roots["hiennu_raw"] / "Dataset001_Tiny2d" / "imagesTr"
    words = [{"INPUT_FOLDER": str(images), "OUTPUT_FOLDER": str(tmp_path / "pred")}.get(w, w)
             for w in shlex.split(info.predict_command)]
    assert words[0] == "hiennu_predict"
    assert predict.main(words[1:] + ["--device", "cpu", "--disable-tta", "-q"]) == 0
    labels = sorted(p.name for p in (hiennu_roots["hiennu_raw"] / "Dataset001_Tiny2d" / "labelsTr").iterdir())
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.mha")) == labels


def test_an_ensemble_folder_left_half_written_is_named_not_taken_for_no_ensemble(cv):
    """Killed between postprocessing.json and members.json, an ensemble folder was read as no ensemble at all:
    prediction and export went ahead without the post-processing chosen for it."""
    from hiennu.inference.ensemble_members import check_ensemble_complete
    from hiennu.inference.model_registry import resolve_model
    assert cli.main(["-d", "Tiny", "-m", A, B, "-f", "0", "1", "2", "-np", "1", "-q"]) == 0
    folder = EnsembleFolder.of(cv, [A, B])
    check_ensemble_complete(folder.path)  # whole: nothing to say
    folder.members.unlink()
    with pytest.raises(HiennuError, match=r"half-written by an interrupted hiennu_find_best_configuration \(no "
                                          r"members.json\); run it again: hiennu_find_best_configuration"):
        check_ensemble_complete(folder.path, "hiennu_find_best_configuration -d Tiny -m A B")
    with pytest.raises(HiennuError, match="half-written"):
        resolve_model(folder.path)


def test_a_signal_while_an_ensemble_is_committed_is_held_until_its_record_is_written(tmp_path, monkeypatch,
                                                                                   ctrl_c_delivered):
    """Ctrl-C landing between the renames that replace an ensemble's validation masks is delivered once the new
    masks and records are in place; no hidden copy of the old masks is left in the ensemble's folder."""
    import os
    import signal
    import hiennu.ensembling.ensemble_cv as ensemble_cv
    from hiennu.ensembling.ensemble_cv import Candidate, EnsembleStaging

    candidate = Candidate(("A__p__2d", "B__p__3d_fullres"))
    for round_ in ("old", "new"):
        staging = EnsembleStaging(tmp_path)
        staging.validation_dir(candidate).mkdir(parents=True)
        (staging.validation_dir(candidate) / "summary.json").write_text(round_)
        real, calls = os.replace, []

        def replace(src, dst):
            real(src, dst)
            calls.append(dst)
            if round_ == "new" and len(calls) == 1:  # the old masks just moved aside
                os.kill(os.getpid(), signal.SIGINT)

        monkeypatch.setattr(ensemble_cv.os, "replace", replace)
        if round_ == "old":
            folder = staging.commit(candidate, {"members": list(candidate.members)}, {"round": round_})
        else:
            with pytest.raises(KeyboardInterrupt):
                staging.commit(candidate, {"members": list(candidate.members)}, {"round": round_})
        monkeypatch.setattr(ensemble_cv.os, "replace", real)
        staging.discard()
    assert (folder.validation_dir / "summary.json").read_text() == "new"
    assert json.loads(folder.postprocessing.read_text()) == {"round": "new"} and folder.members.is_file()
    assert sorted(p.name for p in folder.path.iterdir()) == sorted([folder.validation_dir.name, folder.members.name,
                                                                    folder.postprocessing.name])


def test_a_folder_it_cannot_write_into_is_named_before_anything_is_written(cv, capsys, monkeypatch):
    """A read-only model folder stopped the run after it had written another model's postprocessing.json and an
    ensemble, naming a hidden temporary file; it is named first, and nothing is written."""
    import hiennu.ensembling.best_configuration as best_configuration
    real = os.access
    monkeypatch.setattr(best_configuration.os, "access",
                        lambda path, mode: False if Path(path).name == B else real(path, mode))
    assert cli.main(_run("-q")) == 1
    err = capsys.readouterr().err
    assert f"{cv / B}: cannot be written (read-only?)" in err and "run on a writable copy" in err, err
    assert _written(cv) == set()


def test_a_model_trained_before_its_plans_were_replaced_is_warned_about_and_scored(cv, capsys, hiennu_roots):
    """Models of different plans compare case by case in native geometry, so none is refused; but a configuration
    whose plans were replaced since its training (re-planned, the other configuration retrained) is named."""
    trained = load_plans(ModelFolder(cv / B).plans)
    current = hiennu_roots["hiennu_preprocessed"] / DATASET / "plans.json"
    save_plans(trained, current)
    assert cli.main(_run()) == 0
    assert "was trained with other plans" not in capsys.readouterr().err
    lowres = trained.configurations["3d_lowres"]
    trained.configurations["3d_lowres"] = dataclasses.replace(lowres, target_spacing_zyx=[3.0, 1.0, 1.0])
    save_plans(trained, current)
    assert cli.main(_run()) == 0
    err = capsys.readouterr().err
    assert f"model {B} was trained with other plans than {current} holds now (target_spacing_zyx" in err, err
    assert "it is scored as trained; to train it on the current plans, e.g. mv " in err
    assert "&& hiennu_train Tiny TrainerX 0 -c 3d_lowres --npz (and its other folds)" in err
