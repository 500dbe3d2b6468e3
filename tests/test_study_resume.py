"""The loss study's resume semantics (a finished fold is reused only when its record matches the
request) and its progress line over the whole study."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

import hiennu
from hiennu.errors import HiennuError
from hiennu.study.loss_study import LossStudyOptions, StudyProgress, train_fold
from hiennu.training.options import TrainingOptions
from hiennu.io import checkpoint as ckpt
from helpers import DATASET, fold_dir, make_tiny_dataset, options


def _study_options(**kw) -> LossStudyOptions:
    base = dict(trainers=["TrainerDice"], folds=[0], epochs=1, iterations_per_epoch=1, num_workers=0, device="cpu",
                seed=7)
    base.update(kw)
    training = {f.name for f in dataclasses.fields(TrainingOptions)}
    return LossStudyOptions(dataset="Tiny", training=TrainingOptions(
        dataset="Tiny", **{k: v for k, v in base.items() if k in training}),
        **{k: v for k, v in base.items() if k not in training})


@pytest.fixture
def finished_fold(hiennu_roots):
    """A finished, 'validated' TrainerDice fold 0 of the tiny dataset (1 epoch of 1 step, seed 7)."""
    from hiennu.training.launch import train
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    folder = train(options(epochs=1, iterations_per_epoch=1), "TrainerDice")
    (folder / "validation").mkdir()
    (folder / "validation" / "summary.json").write_text("{}")
    return folder


def test_a_matching_finished_fold_is_reused(finished_fold):
    before = (finished_fold / ckpt.FINAL).stat().st_mtime_ns
    run = train_fold("TrainerDice", 0, "Tiny", _study_options())
    assert run.fold_dir == finished_fold and not run.trained_now and run.epochs_trained == 1
    assert (finished_fold / ckpt.FINAL).stat().st_mtime_ns == before


@pytest.mark.parametrize("recorded, revalidated", [(ckpt.BEST, True), (ckpt.FINAL, False)])
def test_a_finished_fold_validated_with_another_checkpoint_is_revalidated_not_retrained(
        finished_fold, monkeypatch, recorded, revalidated):
    """CV masks predicted by checkpoint_best (chosen on the very cases) are predicted again with the requested
    checkpoint_final, without training; masks already from checkpoint_final are reused as they are."""
    import hiennu.training.trainer as trainer_module

    calls = []

    def fake_validation(model_dir, fold, case_ids, dataset_name, device, batch_size=None, cpu_bf16=False,
                        checkpoint=ckpt.FINAL, save_probabilities=False):
        calls.append((fold, checkpoint))
        (model_dir / f"fold_{fold}" / "validation" / "summary.json").write_text(json.dumps({"checkpoint": checkpoint}))
        return None

    monkeypatch.setattr(trainer_module, "predict_and_score_validation", fake_validation)
    summary = finished_fold / "validation" / "summary.json"
    summary.write_text(json.dumps({"checkpoint": recorded}))
    before = (finished_fold / ckpt.FINAL).stat().st_mtime_ns
    run = train_fold("TrainerDice", 0, "Tiny", _study_options())
    assert not run.trained_now and run.epochs_trained == 1
    assert (finished_fold / ckpt.FINAL).stat().st_mtime_ns == before and not (finished_fold / ckpt.LATEST).exists()
    assert calls == ([(0, ckpt.FINAL)] if revalidated else [])
    assert json.loads(summary.read_text()) == {"checkpoint": ckpt.FINAL}


def test_a_finished_fold_validated_without_probabilities_is_revalidated_with_them_for_npz(finished_fold, monkeypatch):
    """--npz on a finished fold whose validation kept no probabilities predicts them, without training; a
    validation that kept them is reused."""
    import hiennu.training.trainer as trainer_module

    calls = []

    def fake_validation(model_dir, fold, case_ids, dataset_name, device, batch_size=None, cpu_bf16=False,
                        checkpoint=ckpt.FINAL, save_probabilities=False):
        calls.append((fold, checkpoint, save_probabilities))
        (model_dir / f"fold_{fold}" / "validation" / "summary.json").write_text(
            json.dumps({"checkpoint": checkpoint, "probabilities": save_probabilities}))
        return None

    monkeypatch.setattr(trainer_module, "predict_and_score_validation", fake_validation)
    (finished_fold / "validation" / "summary.json").write_text(json.dumps({"checkpoint": ckpt.FINAL}))
    before = (finished_fold / ckpt.FINAL).stat().st_mtime_ns
    for _ in range(2):
        run = train_fold("TrainerDice", 0, "Tiny", _study_options(save_probabilities=True))
        assert not run.trained_now and (finished_fold / ckpt.FINAL).stat().st_mtime_ns == before
    assert calls == [(0, ckpt.FINAL, True)]


@pytest.mark.parametrize("change, field", [
    (dict(epochs=2), "training.max_epochs: trained with 1, requested 2"),
    (dict(iterations_per_epoch=2), "training.iterations_per_epoch: trained with 1, requested 2"),
    (dict(batch_size=2), "training.batch_size: trained with 4, requested 2"),
    (dict(patience=3), "training.patience: trained with 10, requested 3"),
    (dict(seed=8), "seed: trained with 7, requested 8"),
    (dict(cpu_bf16=True), "training.cpu_bf16: trained with false, requested true"),
])
def test_a_mismatched_finished_fold_is_refused_naming_the_field(finished_fold, change, field):
    opts = _study_options(**change)
    with pytest.raises(HiennuError, match="TrainerDice fold 0: the finished run .* started otherwise") as err:
        train_fold("TrainerDice", 0, "Tiny", opts)
    assert field in str(err.value) and "--retrain-mismatched" in str(err.value)
    assert (finished_fold / ckpt.FINAL).is_file()  # nothing moved or overwritten


def test_an_interrupted_fold_started_otherwise_is_refused_and_a_resume_is_recorded_beside_its_start(
        hiennu_roots, monkeypatch):
    """An interrupted fold was continued under whatever the study asked and then recorded as trained so; it is
    refused like a finished one. hiennu_train --c (nnU-Net's habit) may still continue it with other options: the
    record keeps how the fold was started and lists the resumption with the options it went on under."""
    from hiennu.training.launch import train
    from hiennu.training.trainer import Trainer
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    save_epoch = Trainer._save_epoch

    def stop_after_the_first_epoch(self, epoch, improved, finished):
        save_epoch(self, epoch, improved, finished)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_epoch", stop_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(options(epochs=3, iterations_per_epoch=1, final_validation=True), "TrainerDice")
    monkeypatch.setattr(Trainer, "_save_epoch", save_epoch)
    folder = fold_dir(hiennu_roots["hiennu_results"], "TrainerDice")
    assert (folder / ckpt.LATEST).is_file() and not (folder / ckpt.FINAL).exists()
    with pytest.raises(HiennuError, match=r"TrainerDice fold 0: the interrupted run .* started otherwise than requested "
                                          r"\(seed: trained with 7, requested 8\)"):
        train_fold("TrainerDice", 0, "Tiny", _study_options(epochs=3, seed=8))
    assert (folder / ckpt.LATEST).is_file() and not (folder / ckpt.FINAL).exists()   # nothing moved or continued
    started = json.loads((folder / "debug.json").read_text())
    train(options(epochs=4, iterations_per_epoch=1, resume=True, final_validation=True), "TrainerDice")
    record = json.loads((folder / "debug.json").read_text())
    assert (folder / ckpt.FINAL).is_file()
    assert {k: v for k, v in record.items() if k != "resumed"} == started
    assert [r["options"]["epochs"] for r in record["resumed"]] == [4] and record["options"]["epochs"] == 3
    with pytest.raises(HiennuError, match=r"training.max_epochs: trained with 3, requested 4"):
        train_fold("TrainerDice", 0, "Tiny", _study_options(epochs=4))
    # nor is it taken for the recipe it was started with: part of it trained under the other one
    with pytest.raises(HiennuError, match=r"training.max_epochs: continued \(.*\) with 4, requested 3"):
        train_fold("TrainerDice", 0, "Tiny", _study_options(epochs=3))


def test_a_record_from_before_a_training_field_existed_matches_that_fields_default(finished_fold):
    debug_file = finished_fold / "debug.json"
    debug = json.loads(debug_file.read_text())
    del debug["effective_training_plan"]["cpu_bf16"]  # as folds trained before the field was added
    debug_file.write_text(json.dumps(debug))
    assert not train_fold("TrainerDice", 0, "Tiny", _study_options()).trained_now
    with pytest.raises(HiennuError, match="training.cpu_bf16: trained with false, requested true"):
        train_fold("TrainerDice", 0, "Tiny", _study_options(cpu_bf16=True))


def test_plans_trainer_and_version_changes_are_named(finished_fold, hiennu_roots, monkeypatch):
    plans_path = hiennu_roots["hiennu_preprocessed"] / DATASET / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["configurations"]["3d_fullres"]["min_component_voxels"] = 7
    plans_path.write_text(json.dumps(plans))
    with pytest.raises(HiennuError, match=r"configuration\.min_component_voxels: trained with 0, requested 7"):
        train_fold("TrainerDice", 0, "Tiny", _study_options())
    plans["configurations"]["3d_fullres"]["min_component_voxels"] = 0
    plans_path.write_text(json.dumps(plans))
    trained_version = re.escape(hiennu.__version__)
    with monkeypatch.context() as m:
        m.setattr(hiennu, "__version__", "9.9.9")
        with pytest.raises(HiennuError, match=f"hiennu_version: trained with \"{trained_version}\", requested \"9.9.9\""):
            train_fold("TrainerDice", 0, "Tiny", _study_options())
    debug = json.loads((finished_fold / "debug.json").read_text())
    debug["trainer"] = "TrainerOther"
    (finished_fold / "debug.json").write_text(json.dumps(debug))
    state = ckpt.load_checkpoint(finished_fold / ckpt.FINAL)
    state["trainer_name"] = "TrainerOther"
    ckpt.save_checkpoint(state, finished_fold / ckpt.FINAL)
    with pytest.raises(HiennuError, match=r"trainer: trained with \"TrainerOther\", requested \"TrainerDice\""):
        train_fold("TrainerDice", 0, "Tiny", _study_options())
    (finished_fold / "debug.json").unlink()
    with pytest.raises(HiennuError, match=r"debug.json: missing or unreadable"):
        train_fold("TrainerDice", 0, "Tiny", _study_options())


def test_retrain_mismatched_moves_the_old_fold_aside_and_trains_again(finished_fold, hiennu_roots):
    # no raw dataset here, so the new run ends without native-geometry validation, which the study names
    with pytest.raises(HiennuError, match="training ended without validation predictions"):
        train_fold("TrainerDice", 0, "Tiny", _study_options(epochs=2, retrain_mismatched=True))
    moved = sorted(finished_fold.parent.glob("fold_0.replaced-*"))
    assert len(moved) == 1
    assert (moved[0] / ckpt.FINAL).is_file() and (moved[0] / "validation" / "summary.json").is_file()
    assert ckpt.load_checkpoint(moved[0] / ckpt.FINAL)["epoch"] == 0
    assert ckpt.load_checkpoint(finished_fold / ckpt.FINAL)["epoch"] == 1  # the new fold_0: two epochs (0, 1)
    assert fold_dir(hiennu_roots["hiennu_results"], "TrainerDice") == finished_fold


def test_progress_line_counts_reused_runs_but_times_only_trained_ones():
    tracker = StudyProgress(4)
    assert tracker.done("TrainerDice", 0, 5.0, trained=False) == \
        "run 1/4 done: TrainerDice fold 0 (reused); ETA unknown (no run trained yet)"
    assert tracker.done("TrainerDice", 1, 120.0, trained=True) == \
        "run 2/4 done: TrainerDice fold 1 in 2.0 min; ETA 4.0 min"
    assert tracker.done("TrainerTversky", 0, 240.0, trained=True) == \
        "run 3/4 done: TrainerTversky fold 0 in 4.0 min; ETA 3.0 min"
    assert tracker.done("TrainerTversky", 1, 1.0, trained=False).endswith("(reused); ETA 0.0 min")


def test_the_study_checks_every_finished_fold_before_training_anything(finished_fold, hiennu_roots):
    from hiennu.study.loss_study import run_loss_study
    (hiennu_roots["hiennu_raw"] / DATASET / "labelsTr").mkdir(parents=True)
    opts = _study_options(epochs=2, trainers=["TrainerTversky", "TrainerDice"])
    with pytest.raises(HiennuError, match=r"(?s)1 finished or interrupted run\(s\) were started otherwise.*TrainerDice fold 0 .*"
                                          r"training.max_epochs: trained with 1, requested 2"):
        run_loss_study(opts)
    assert not (finished_fold.parent.parent / "TrainerTversky__hiennuPlans__3d_fullres").exists()  # nothing trained


def _plans_with_batch_dice(hiennu_roots):
    from hiennu.plans import load_plans, save_plans
    path = hiennu_roots["hiennu_preprocessed"] / DATASET / "plans.json"
    plans = load_plans(path)
    plans.configuration().training.batch_dice = True
    save_plans(plans, path)


def test_the_study_refuses_a_loss_the_batch_dice_plans_cannot_train_before_training_anything(hiennu_roots):
    from hiennu.study.loss_study import check_losses_fit_plans, run_loss_study
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    (hiennu_roots["hiennu_raw"] / DATASET / "labelsTr").mkdir(parents=True)
    opts = _study_options(trainers=["TrainerDice", "TrainerHDT", "TrainerTverskyHDT"])
    check_losses_fit_plans("Tiny", opts)  # per-sample plans: every loss trains
    _plans_with_batch_dice(hiennu_roots)
    with pytest.raises(HiennuError, match=r"batch_dice is true, and the loss of TrainerHDT \(HausdorffDTLoss\) has "
                                          r"no region term.*nothing was trained"):
        run_loss_study(opts)
    assert not list(hiennu_roots["hiennu_results"].rglob("TrainerDice__*"))  # the first trainer did not start
    check_losses_fit_plans("Tiny", _study_options(trainers=["TrainerDice", "TrainerTverskyHDT"]))  # hybrids fit
