"""hiennu_train_default_model: plan, train every configuration of the recipe on five folds, find the best, export,
install; resumable, with one ETA over all of it.

The end-to-end tests run a tiny recipe (one step an epoch) on the tiny raw dataset of the 2d tests (6 cases, planned
for a CPU, so the plans hold both 2d and 3d_fullres). Which folds were trained is read from evidence that does not
depend on timing: the log lines and the checkpoints' modification times.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import types
import zipfile

import numpy as np
import pytest

from hiennu.cli import predict
from hiennu.cli import train as train_cli
from hiennu.cli import train_default_model as cli
from hiennu.ensembling import best_configuration as bc
from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json
from hiennu.io.image import read_image
from hiennu.masks import rule_mask
from hiennu.io.checkpoint import FINAL, LATEST
from hiennu.pipeline import default_model as dm
from hiennu.pipeline.default_model import DefaultModelOptions, RecipeProgress, RecipeStep, train_default_model
from hiennu.postprocessing.record import apply_postprocessing, postprocessing_from_record

DATASET = "Dataset001_Tiny2d"
TINY_3D = RecipeStep("3d_fullres", epochs=1, iterations_per_epoch=1)
TINY_2D = RecipeStep("2d", epochs=1, iterations_per_epoch=1)


@pytest.fixture
def tiny(hiennu_roots, monkeypatch):
    """The tiny raw dataset (not planned yet); training without loader processes (not a result-changing option)."""
    from test_2d_configuration import _write_raw
    _write_raw(hiennu_roots["hiennu_raw"] / DATASET)
    original = dm.fold_options
    monkeypatch.setattr(dm, "fold_options", lambda *a, **k: dataclasses.replace(original(*a, **k), num_workers=0))
    return hiennu_roots


class Lines(logging.Handler):
    """The package's log records, as text (the package logger does not propagate to pytest's caplog once a
    command has configured it)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.text = ""

    def emit(self, record):
        self.text += record.getMessage() + "\n"


def _run(log: Lines, **kw) -> tuple[dm.DefaultModelResult, str]:
    logger = logging.getLogger("hiennu")
    level = logger.level
    log.text = ""
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        result = train_default_model(DefaultModelOptions(dataset="Tiny2d", device="cpu", num_processes=1, **kw))
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
    return result, log.text


@pytest.fixture
def lines() -> Lines:
    return Lines()


def _mtimes(results, configuration: str, skip: int | None = None) -> dict[int, int]:
    """Each fold's checkpoint_final.pth modification time (the fold ``skip`` left out)."""
    model = results / DATASET / f"TrainerDiceFocal__hiennuPlans__{configuration}"
    return {k: (model / f"fold_{k}" / FINAL).stat().st_mtime_ns for k in range(5) if k != skip}


# ------------------------------------------------------------------------------------------------ fast

def test_the_recipe_is_the_measured_one():
    assert dm.DEFAULT_RECIPE == (RecipeStep("3d_fullres", "TrainerDiceFocal", epochs=30, patience=1000),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dm.DEFAULT_RECIPE[0].epochs = 3


def test_the_expectation_line_of_an_older_record_says_what_it_lacks():
    """An inference_information.json written before candidates had post-processing or the fully nested estimate:
    the line names what is missing instead of printing NaN scores."""
    from hiennu.ensembling.inference_information import InferenceInformation
    metrics = {"dice": {"mean": 0.5, "ci95_low": 0.4, "ci95_high": 0.6}, "masd": {"mean": 4.0}, "nsd": {"mean": 0.6}}
    names = ["TrainerDice__hiennuPlans__2d", "TrainerDice__hiennuPlans__3d_fullres"]
    old = InferenceInformation.from_dict({
        "dataset": DATASET, "folds": [0, 1, 2, 3, 4], "case_ids": ["a", "b"],
        "candidates": [{"name": n, "kind": "model", "members": [], "path": n, "metrics": metrics} for n in names],
        "chosen": {"name": names[1], "kind": "model", "members": [], "folds": [0, 1, 2, 3, 4],
                   "checkpoint": FINAL, "path": names[1], "postprocessing": {}},
        "predict_command": "hiennu_predict ..."})
    assert dm.expectation_text(old) == (
        f"{names[1]}, nested with its post-processing (the best of 2 candidates on the same cases: it flatters): not "
        "recorded (an older inference_information.json); the whole choice was not estimated fully nested "
        "(--nested-choice estimates it)")
    assert dm._scores_text(metrics) == "Dice 0.500 [0.400, 0.600] / MASD 4.00 mm / NSD 0.600"
    assert dm._scores_text({"dice": {"mean": 0.5, "ci95_low": None}}) == "Dice 0.500 / MASD n/a mm / NSD n/a"


def _task(configuration: str, fold: int, steps: int, per_epoch: int = 25, batch: int = 2, patch=(8, 8, 8)):
    layout = types.SimpleNamespace(iterations_per_epoch=per_epoch, training=types.SimpleNamespace(batch_size=batch),
                                   config=types.SimpleNamespace(input_size_zyx=patch))
    return types.SimpleNamespace(configuration=configuration, fold=fold, steps_to_run=steps, layout=layout)


def test_one_eta_over_every_configuration():
    """Each configuration's time per step is its own: from its first epoch, then its finished folds; one not timed
    yet is named, not guessed from another's (a 2d step and a 3d_fullres step differ by up to 9x)."""
    now = [0.0]
    tasks = [_task("3d", 0, 0), _task("3d", 1, 100), _task("2d", 0, 50), _task("2d", 1, 50)]
    progress = RecipeProgress(tasks, clock=lambda: now[0])
    wait = "not timed yet (the first epoch of a fold of it will tell)"
    now[0] = 60.0
    line = progress.done(tasks[0], 5.0, 0, "reused")
    assert line == f"fold 1 of 4 done (3d fold 0: reused), 1.0 min elapsed, time left unknown: 3d, 2d {wait}"
    now[0] = 120.0
    assert progress.first_epoch(tasks[1], 150.0) == ("3d fold 1: 6.00 s a step in its first epoch here, validation "
                                                     f"included; 2.0 min elapsed, about 10.0 min left for 3d; 2d {wait}")
    assert progress.first_epoch(tasks[1], 100.0) is None  # only the first epoch of a configuration is logged
    now[0] = 660.0
    line = progress.done(tasks[1], 600.0, 100, "trained, 100 steps")
    assert line == (f"fold 2 of 4 done (3d fold 1: trained, 100 steps, 10.0 min), 11.0 min elapsed, time left unknown: "
                    f"2d {wait}")
    now[0] = 690.0
    assert progress.first_epoch(tasks[2], 50.0) == ("2d fold 0: 2.00 s a step in its first epoch here, validation "
                                                    "included; 11.5 min elapsed, about 3.3 min left")
    now[0] = 760.0
    line = progress.done(tasks[2], 150.0, 50, "trained, 50 steps")  # the finished fold's 3 s a step from now on
    assert line.endswith("12.7 min elapsed, about 2.5 min left")
    now[0] = 860.0
    assert progress.done(tasks[3], 100.0, 50, "trained, 50 steps").endswith("14.3 min elapsed, no training left")


def test_long_etas_are_in_hours():
    progress = RecipeProgress([_task("3d", 0, 3000)], clock=lambda: 0.0)
    assert progress.first_epoch(_task("3d", 0, 3000), 125.0).endswith("about 4.2 h left")


def test_folds_train_fold_by_fold_the_cheaper_configuration_first():
    """Fold 0 of every configuration comes first, the one with fewer voxels per step first in each fold, so that
    every configuration is timed early; a tie keeps the recipe's order."""
    three = [_task("3d_fullres", f, 600, batch=2, patch=(48, 88, 72)) for f in range(3)]
    two = [_task("2d", f, 1000, batch=20, patch=(1, 96, 80)) for f in range(3)]
    order = [(t.configuration, t.fold) for t in dm.training_order(three + two)]
    assert order == [("2d", 0), ("3d_fullres", 0), ("2d", 1), ("3d_fullres", 1), ("2d", 2), ("3d_fullres", 2)]
    tie = [_task("b", 0, 1), _task("a", 0, 1)]
    assert [t.configuration for t in dm.training_order(tie)] == ["b", "a"]


def test_a_continued_fold_counts_only_the_steps_it_lacks():
    progress = RecipeProgress([_task("3d", 0, 100), _task("3d", 1, 30)], clock=lambda: 0.0)
    assert progress.done(_task("3d", 0, 100), 200.0, 100, "trained").endswith("about 1.0 min left")


def test_bad_input_is_one_line_and_writes_nothing(hiennu_roots, tmp_path, capsys):
    assert cli.main(["-d", "Nowhere", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'Nowhere'") and err.count("\n") == 1
    (hiennu_roots["hiennu_preprocessed"] / DATASET).mkdir()  # known, but no raw dataset
    assert cli.main(["-d", "Tiny2d", "-q"]) == 1
    err = capsys.readouterr().err
    assert "raw dataset" in err and "hiennu_raw" in err and err.count("\n") == 1
    from test_2d_configuration import _write_raw
    _write_raw(hiennu_roots["hiennu_raw"] / DATASET)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert cli.main(["-d", "Tiny2d", "-o", str(folder), "-q"]) == 1
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(HiennuError, match="same trainer"):
        train_default_model(DefaultModelOptions("Tiny2d", recipe=(TINY_3D, RecipeStep("2d", trainer="TrainerDice"))))
    with pytest.raises(HiennuError, match="twice"):
        train_default_model(DefaultModelOptions("Tiny2d", recipe=(TINY_3D, TINY_3D)))
    assert not any((hiennu_roots["hiennu_preprocessed"] / DATASET).iterdir())
    assert not any(hiennu_roots["hiennu_results"].iterdir())
    assert not any(tmp_path.glob("**/*.zip"))


def test_plans_trains_chooses_exports_installs_then_reuses_every_fold(tiny, tmp_path, lines, monkeypatch):
    """One configuration (3d_fullres), end to end: the default model predicts; a second run trains, chooses,
    exports and installs nothing (the choice is not even called); --rechoose or a touched checkpoint makes it
    choose again; other choice options choose again, and a rule chosen ships as a rule zip, installed as the
    default; a recipe that differs from what the folds were trained with is refused before anything is
    trained."""
    results = tiny["hiennu_results"]
    monkeypatch.setattr(dm, "DEFAULT_RECIPE", (TINY_3D,))
    result, text = _run(lines, rule_candidate=False)
    assert "no plans in" in text and "planning and preprocessing 3d_fullres" in text
    assert "3d_fullres (TrainerDiceFocal" in text and "1 epochs (recipe) x 1 steps (recipe) = 1 steps per fold, patience 10;" in text
    assert "fold 1 of 5 done (3d_fullres fold 0: trained, 1 steps" in text and "min elapsed, about" in text
    assert text.count("s a step in its first epoch here") == 1  # the trainer's epoch reaches the ETA, once
    assert text.index("3d_fullres fold 0: ") < text.index("s a step in its first epoch here") < text.index("fold 1 of 5")
    assert "fold 5 of 5 done (3d_fullres fold 4: trained" in text and "no training left" in text
    model = results / DATASET / "TrainerDiceFocal__hiennuPlans__3d_fullres"
    for k in range(5):
        summary = read_json(model / f"fold_{k}" / "validation" / "summary.json")
        assert summary["probabilities"] is True and summary["checkpoint"] == FINAL
        debug = read_json(model / f"fold_{k}" / "debug.json")  # the override recorded as hiennu_train --epochs does
        assert debug["options"]["epochs"] == 1 and debug["effective_training_plan"]["max_epochs"] == 1
        assert debug["options"]["save_probabilities"] is True
    assert result.zip_path == results / DATASET / "default_model.zip" and result.zip_path.is_file()
    assert result.information.chosen.name == model.name and result.best.information == result.information
    assert result.reused == []
    assert "choosing the post-processing of 3d_fullres by cross-validation (hiennu_find_best_configuration" in text
    # the whole choice is estimated fully nested, and the last line says what to expect beside the flattering row
    fully = result.information.nested_choice
    assert fully is not None and set(fully.choices) == {0, 1, 2, 3, 4}
    expect = text[text.index("what the choice says to expect: "):].splitlines()[0]
    chosen_nested = result.information.candidates[0].postprocessing["nested"]["dice"]["mean"]
    assert (f"{model.name}, nested with its post-processing (the only candidate: what to expect on new cases): "
            f"Dice {chosen_nested:.3f}") in expect
    assert fully.metrics["dice"]["mean"] == pytest.approx(chosen_nested)  # one candidate: the same estimate
    assert "fully nested" not in expect
    assert "the rule with the same post-processing: Dice " in expect and "--nested-choice" in text
    assert read_json(results / "default_model.json") == {"model_dir": f"{DATASET}/{model.name}"}
    assert read_json(model / "postprocessing.json")["candidate_set"] == dm.DEFAULT_CHOICE["postprocessing_candidates"]
    images = tiny["hiennu_raw"] / DATASET / "imagesTr"
    assert predict.main(["-i", str(images), "-o", str(tmp_path / "pred"), "--device", "cpu", "--disable-tta",
                         "-q"]) == 0
    labels = sorted(p.name for p in (tiny["hiennu_raw"] / DATASET / "labelsTr").iterdir())
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.mha")) == labels

    before = _mtimes(results, "3d_fullres")
    zip_time = result.zip_path.stat().st_mtime_ns

    def not_again(*args, **kwargs):
        raise AssertionError("nothing changed: the choice, export and install must be reused")

    originals = {name: getattr(dm, name) for name in ("find_best_configuration", "export_models", "install_model_zip")}
    for name in originals:
        monkeypatch.setattr(dm, name, not_again)
    again, text = _run(lines, rule_candidate=False)
    assert "plans and preprocessed cases reused" in text
    assert "5 reused, 0 to re-validate with --npz, 0 to continue, 0 to train" in text
    assert "folds 0, 1, 2, 3, 4 reused" in text and "training (--npz)" not in text
    assert " done (" not in text  # the plan's line names the reused folds; no line a fold
    assert _mtimes(results, "3d_fullres") == before
    assert again.reused == ["choice", "export", "install"] and again.best is None
    assert again.information == result.information and again.installed == result.installed
    assert f"the choice of {DATASET} is reused: {model.name}" in text and "not installed again" in text
    assert expect in text  # read back from inference_information.json
    assert again.zip_path.stat().st_mtime_ns == zip_time

    # --rechoose chooses again although nothing changed; so does any change to what the choice was made from
    class Chosen(Exception):
        pass

    def choosing(options):
        raise Chosen

    monkeypatch.setattr(dm, "find_best_configuration", choosing)
    with pytest.raises(Chosen):
        _run(lines, rule_candidate=False, rechoose=True)
    assert "not reusing the last choice: --rechoose" in lines.text
    touched = model / "fold_2" / FINAL
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10 ** 9))
    with pytest.raises(Chosen):
        _run(lines, rule_candidate=False)
    assert (f"not reusing the last choice: what it was made from changed: results/{DATASET}/{model.name}/fold_2/"
            f"{FINAL} changed") in lines.text
    before = _mtimes(results, "3d_fullres")

    # the rule with its post-processing competing (--rule-candidate --postprocessing-candidates cap-filter, other
    # options: chosen again); when it wins (forced here, whatever the tiny folds score) the rule folder is exported,
    # installed and predicts
    for name, original in originals.items():
        monkeypatch.setattr(dm, name, original)
    select = bc.select

    def the_rule(pool, select_by):
        best, selection = select(pool, select_by)
        return next(c for c in pool if c.kind == "rule"), selection

    monkeypatch.setattr(bc, "select", the_rule)
    ruled, text = _run(lines, rule_candidate=True, postprocessing_candidates="cap-filter")
    assert "not reusing the last choice: find_best changed" in text
    assert ruled.information.chosen.kind == "rule" and zipfile.is_zipfile(ruled.zip_path)
    assert json.loads(zipfile.ZipFile(ruled.zip_path).read("manifest.json"))["format"] == "hiennu-rule"
    assert ruled.installed == results / DATASET / "baseline_zadc"
    assert read_json(results / "default_model.json") == {"rule_dir": f"{DATASET}/baseline_zadc"}
    record = read_json(results / DATASET / "baseline_zadc" / "postprocessing.json")
    assert record["candidate_set"] == "cap-filter"
    # the model's record of the default choice was chosen among other candidates: set aside, not kept and shipped
    aside = list(model.glob("postprocessing.json.replaced-*"))
    assert len(aside) == 1 and read_json(aside[0])["candidate_set"] == dm.DEFAULT_CHOICE["postprocessing_candidates"]
    assert read_json(model / "postprocessing.json")["candidate_set"] == "cap-filter"
    assert f"{model.name}/postprocessing.json was chosen among other post-processing candidates" in text
    assert predict.main(["-i", str(images), "-o", str(tmp_path / "pred_rule"), "-q"]) == 0
    post = postprocessing_from_record(record, "r")
    for name in labels:
        case = name[: -len(".mha")]
        adc, geo = read_image(images / f"{case}_0000.mha")
        zadc = read_image(images / f"{case}_0001.mha")[0]
        expected = apply_postprocessing(rule_mask(zadc, adc).astype(np.uint8), post, zadc, adc, geo.spacing_zyx)
        assert np.array_equal(read_image(tmp_path / "pred_rule" / name, dtype=np.uint8)[0], expected)

    # the model's plans edited to nnU-Net's patch windows (the planner wrote case): every fold is validated again,
    # not trained again (the final weights do not depend on the window), and the record chosen on the case windows'
    # masks is set aside, so the choice writes one made on the masks the model predicts now
    plans = read_json(model / "plans.json")
    assert plans["configurations"]["3d_fullres"]["inference_window"] == "case"
    plans["configurations"]["3d_fullres"]["inference_window"] = "patch"
    (model / "plans.json").write_text(json.dumps(plans))
    unnested, text = _run(lines, rule_candidate=True, postprocessing_candidates="cap-filter", nested_choice=False)
    assert unnested.information.nested_choice is None
    assert "the whole choice was not estimated fully nested (--nested-choice estimates it)" in text
    assert "0 reused, 5 to re-validate with --npz, 0 to continue, 0 to train" in text
    assert ("3d_fullres fold 0: finished, but its validation masks were predicted with inference_window 'case', the "
            "plans now say 'patch': validating again") in text
    assert (f"{model.name}/postprocessing.json was chosen on validation masks of inference_window 'case', its folds' "
            f"validations are now 'patch': moved aside") in text
    assert read_json(model / "fold_0" / "validation" / "summary.json")["inference_window"] == "patch"
    assert set(read_json(model / "postprocessing.json")["validation_windows"].values()) == {"patch"}
    assert _mtimes(results, "3d_fullres") == before

    monkeypatch.setattr(dm, "DEFAULT_RECIPE", (dataclasses.replace(TINY_3D, epochs=2),))
    with pytest.raises(HiennuError, match=r"5 fold\(s\) of the recipe were trained otherwise.*max_epochs: trained "
                                          r"with 1, requested 2.*--retrain-mismatched"):
        _run(lines, rule_candidate=False)
    assert _mtimes(results, "3d_fullres") == before


# ------------------------------------------------------------------------------------------------ slow

@pytest.mark.slow
def test_two_configurations_resume_revalidate_and_retrain_one_deleted_fold(tiny, tmp_path, lines, monkeypatch):
    """2d + 3d_fullres and their ensemble: a fold trained beforehand without --npz is re-validated, a run
    interrupted in the middle of a fold is continued there, a deleted fold is trained again alone."""
    from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    from hiennu.training.trainer import Trainer
    results = tiny["hiennu_results"]
    recipe_3d = dataclasses.replace(TINY_3D, epochs=2)
    monkeypatch.setattr(dm, "DEFAULT_RECIPE", (recipe_3d, TINY_2D))
    plan_and_preprocess("Tiny2d", PlanAndPreprocessOptions(configurations=["2d"], plan_for="cpu", num_processes=1))
    # 2d fold 0 as hiennu_train trains it without --npz
    assert train_cli.main(["Tiny2d", "TrainerDiceFocal", "0", "-c", "2d", "--epochs", "1", "--iterations-per-epoch",
                           "1", "--num-workers", "0", "--device", "cpu", "-q"]) == 0
    model_2d = results / DATASET / "TrainerDiceFocal__hiennuPlans__2d"
    revalidated = (model_2d / "fold_0" / FINAL).stat().st_mtime_ns

    # the first run is interrupted after epoch 0 of 3d_fullres fold 1
    save_epoch = Trainer._save_epoch

    def interrupting(self, epoch, improved, finished):
        save_epoch(self, epoch, improved, finished)
        if self.config.name == "3d_fullres" and self.options.fold == 1 and epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_epoch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _run(lines, rule_candidate=False)
    text = lines.text
    assert "plans reused from" in text and "preprocessing 3d_fullres with them" in text  # 2d was there, 3d not
    assert "2d (TrainerDiceFocal" in text and "fold 0 to re-validate with --npz (no training)" in text
    # fold by fold: 3d_fullres fold 0 trained, 2d fold 0 re-validated, then the interruption in 3d_fullres fold 1
    assert "(2d fold 0: re-validated" in text and "(3d_fullres fold 0: trained" in text
    model_3d = results / DATASET / "TrainerDiceFocal__hiennuPlans__3d_fullres"
    assert (model_3d / "fold_1" / LATEST).is_file() and not (model_3d / "fold_1" / FINAL).is_file()
    monkeypatch.setattr(Trainer, "_save_epoch", save_epoch)

    result, text = _run(lines, rule_candidate=False, output=tmp_path / "model.zip")
    assert "plans and preprocessed cases reused" in text
    assert "2 reused, 0 to re-validate with --npz, 1 to continue, 7 to train" in text
    assert "fold 1 to continue from epoch 1" in text
    assert "fold 3 of 10 done (3d_fullres fold 1: continued, 1 steps" in text
    assert "fold 10 of 10 done" in text
    assert read_json(model_3d / "fold_1" / "progress.json")["epoch"] == [0, 1]
    assert (model_2d / "fold_0" / FINAL).stat().st_mtime_ns == revalidated  # validated again, not retrained
    assert read_json(model_2d / "fold_0" / "validation" / "summary.json")["probabilities"] is True
    info = result.information
    assert len(info.candidates) == 3 and result.zip_path == tmp_path / "model.zip"
    assert "choosing among 3d_fullres, 2d, their ensemble by cross-validation" in text
    assert f"what the choice says to expect: {info.chosen.name}, nested" in text
    assert "(the best of 3 candidates on the same cases: it flatters)" in text
    default = read_json(results / "default_model.json")
    assert default.get("model_dir", default.get("ensemble_dir")).endswith(info.chosen.path)

    shutil.rmtree(model_2d / "fold_3")
    before_3d, before_2d = _mtimes(results, "3d_fullres"), _mtimes(results, "2d", skip=3)
    # whatever the tiny folds score, this time the ensemble is chosen: it is exported and installed as one zip
    find_best = dm.find_best_configuration

    def choosing_the_ensemble(options):
        best = find_best(options)
        ensemble = next(c for c in best.information.candidates if c.kind == "ensemble")
        chosen = dataclasses.replace(best.information.chosen, name=ensemble.name, kind=ensemble.kind,
                                     members=ensemble.members, path=ensemble.path)
        return dataclasses.replace(best, information=dataclasses.replace(best.information, chosen=chosen))

    monkeypatch.setattr(dm, "find_best_configuration", choosing_the_ensemble)
    result, text = _run(lines, rule_candidate=False, output=tmp_path / "ensemble.zip")
    assert "9 reused, 0 to re-validate with --npz, 0 to continue, 1 to train" in text
    assert "(2d fold 3: trained" in text and text.count(": trained") == 1
    assert _mtimes(results, "3d_fullres") == before_3d and _mtimes(results, "2d", skip=3) == before_2d
    assert (tmp_path / "ensemble.zip").is_file() and result.installed.parent.name == "ensembles"
    assert f"what the choice says to expect: {result.information.chosen.name}, nested" in text
    assert read_json(results / "default_model.json")["ensemble_dir"] == f"{DATASET}/{result.information.chosen.path}"
    images = tiny["hiennu_raw"] / DATASET / "imagesTr"
    assert predict.main(["-i", str(images), "-o", str(tmp_path / "pred"), "--device", "cpu", "--disable-tta",
                         "-q"]) == 0
    assert len(list((tmp_path / "pred").glob("*.mha"))) == 6


def test_preprocessing_is_reused_only_when_the_preprocessor_counts_every_case_done(tiny):
    """A preprocessing cut off after a case's arrays (CASE.json, written last, missing) or a case whose raw file
    changed since is preprocessed again before any fold trains; it was reused on the strength of CASE.npy alone,
    and training failed hours later on the missing file."""
    assert dm.ensure_preprocessed(DATASET, ["3d_fullres", "2d"], device="cpu", num_processes=1) == "planned"
    assert dm.ensure_preprocessed(DATASET, ["3d_fullres", "2d"], num_processes=1) == "reused"
    pre = tiny["hiennu_preprocessed"] / DATASET / "2d"
    case = sorted(pre.glob("*.json"))[0]
    case.unlink()
    (pre / f"{case.stem}_seg.npy").unlink()
    assert dm.ensure_preprocessed(DATASET, ["3d_fullres", "2d"], num_processes=1) == "preprocessed"
    assert case.is_file() and (pre / f"{case.stem}_seg.npy").is_file()
    assert dm.ensure_preprocessed(DATASET, ["3d_fullres", "2d"], num_processes=1) == "reused"
    image = sorted((tiny["hiennu_raw"] / DATASET / "imagesTr").glob("*_0000.*"))[0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10 ** 9))   # the file changed
    assert dm.ensure_preprocessed(DATASET, ["3d_fullres", "2d"], num_processes=1) == "preprocessed"
