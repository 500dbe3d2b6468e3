"""Issue #12 §2: a trained fold keeps its plans, finished work is never overwritten, one run per fold.

Tiny CPU trainings (one epoch of one step on the 16x32x32 tiny dataset of test_training).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.inference.model_zip import export_model_zip, load_model_zip
from hiennu.inference.predictor import Predictor
from hiennu.plans import load_plans, save_plans
from hiennu.training.fold_lock import LOCK_NAME, FoldLock, FoldLockedError
from helpers import DATASET, fold_dir, load, make_tiny_dataset, options, write_module

QUICK = dict(epochs=1, iterations_per_epoch=1)


@pytest.fixture
def tiny(hiennu_roots):
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    return hiennu_roots


def _train(**kw):
    from hiennu.training.launch import train
    return train(options(**{**QUICK, **kw}), "TrainerDice")


def _edit_preprocessed_plans(roots, **changes):
    """Edit the preprocessed plans.json's 3d_fullres configuration (as a user would)."""
    path = roots["hiennu_preprocessed"] / DATASET / "plans.json"
    plans = load_plans(path)
    cfg = plans.configuration("3d_fullres")
    for key, value in changes.items():
        obj, _, attr = key.rpartition(".")
        setattr(getattr(cfg, obj) if obj else cfg, attr, value)
    save_plans(plans, path)
    return plans


# ----------------------------------------------------------------------------- plans per fold

def test_a_failed_start_leaves_the_shared_plans_alone(tiny, monkeypatch):
    out0 = _train()
    model_dir = out0.parent
    shared_before = (model_dir / "plans.json").read_bytes()
    assert load_plans(out0 / "plans.json") == load_plans(model_dir / "plans.json")  # the fold keeps its plans
    _edit_preprocessed_plans(tiny, **{"target_size_xyz": [32, 32, 32]})

    from hiennu.training.trainers import TrainerDice

    def fail(self):
        raise HiennuError("the loader failed")

    monkeypatch.setattr(TrainerDice, "build_batches", fail)
    with pytest.raises(HiennuError, match="the loader failed"):
        _train(fold=1)
    assert (model_dir / "plans.json").read_bytes() == shared_before
    assert load_plans(model_dir / "fold_1" / "plans.json").configuration().target_size_xyz == [32, 32, 32]
    assert Predictor.from_model_dir(model_dir, folds=[0], device="cpu").configuration.target_size_xyz == [32, 32, 16]


def test_a_fold_stopped_as_it_finishes_is_published_when_continued(tiny, monkeypatch):
    """Killed between checkpoint_final.pth and the shared plans, a fold was 'finished' for --c, which never published
    them: its own model could not predict. The shared files now come first, and a continued run publishes again."""
    import hiennu.training.trainer as trainer_module
    model_dir = _train().parent
    _edit_preprocessed_plans(tiny, **{"training.learning_rate": 3e-4})
    real = trainer_module.finish_checkpoints

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # the run ends as the final checkpoint is written

    monkeypatch.setattr(trainer_module, "finish_checkpoints", stopped)
    with pytest.raises(KeyboardInterrupt):
        _train(fold=1)
    assert not (model_dir / "fold_1" / "checkpoint_final.pth").exists()
    assert load_plans(model_dir / "plans.json") == load_plans(model_dir / "fold_1" / "plans.json")
    monkeypatch.setattr(trainer_module, "finish_checkpoints", real)
    (model_dir / "plans.json").write_bytes((model_dir / "fold_0" / "plans.json").read_bytes())  # as if unpublished
    _train(fold=1, resume=True)
    assert (model_dir / "fold_1" / "checkpoint_final.pth").is_file()
    assert load_plans(model_dir / "plans.json") == load_plans(model_dir / "fold_1" / "plans.json")
    assert Predictor.from_model_dir(model_dir, folds=[1], device="cpu").folds == ["1"]


def test_a_refused_run_leaves_nothing_behind(tiny):
    """A second training of a finished fold wrote a 'training ...' line into its log before it was refused, and --val
    of a fold never trained left a fold folder and a log."""
    out0 = _train()
    log_before = (out0 / "training_log.txt").read_text()
    with pytest.raises(HiennuError, match="already holds a training"):
        _train()
    assert (out0 / "training_log.txt").read_text() == log_before
    with pytest.raises(HiennuError, match="--val: .*fold_1 has no checkpoint_final.pth"):
        _train(fold=1, validation_only=True, final_validation=True)
    assert not (out0.parent / "fold_1").exists()


@pytest.mark.parametrize("field, value, named", [
    ("target_size_xyz", [32, 32, 32], "target_size_xyz: trained with [32, 32, 16], now [32, 32, 32]"),
    ("normalization", None, "normalization[0].scheme"),
])
def test_predictor_refuses_a_fold_trained_with_other_plans(tiny, field, value, named):
    out = _train()
    model_dir = out.parent
    plans = load_plans(model_dir / "plans.json")
    cfg = plans.configuration()
    if field == "normalization":
        cfg.normalization[0].scheme = "none"
    else:
        setattr(cfg, field, value)
    save_plans(plans, model_dir / "plans.json")
    with pytest.raises(HiennuError) as info:
        Predictor.from_model_dir(model_dir, folds=[0], device="cpu")
    message = str(info.value)
    assert named in message and "checkpoint_final.pth" in message and str(out / "plans.json") in message


def test_training_only_edits_do_not_block_prediction(tiny):
    out = _train()
    plans = load_plans(out.parent / "plans.json")
    plans.configuration().training.max_epochs = 500
    plans.configuration().notes = "edited"
    save_plans(plans, out.parent / "plans.json")
    Predictor.from_model_dir(out.parent, folds=[0], device="cpu")


def test_export_and_zip_loading_check_the_trained_configuration(tiny, tmp_path):
    out = _train()
    zip_path = export_model_zip(out.parent, tmp_path / "model.zip")
    loaded = load_model_zip(zip_path)
    assert loaded.weights["0"]
    plans = load_plans(out.parent / "plans.json")
    plans.configuration().target_size_xyz = [32, 32, 32]
    save_plans(plans, out.parent / "plans.json")
    with pytest.raises(HiennuError, match="target_size_xyz: trained with"):
        export_model_zip(out.parent, tmp_path / "model2.zip")


def test_continue_refuses_when_the_plans_changed_since_the_fold_started(tiny, monkeypatch):
    """An unfinished fold continued under edited plans would mix them; a finished one trains nothing (it is only
    validated, from the raw images with its own plans), so it goes on."""
    from hiennu.training.trainer import Trainer
    real = Trainer._run_epoch

    def stop_in_the_second_epoch(self, batches, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, batches, epoch)

    monkeypatch.setattr(Trainer, "_run_epoch", stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(epochs=3)
    monkeypatch.setattr(Trainer, "_run_epoch", real)
    _edit_preprocessed_plans(tiny, **{"network.negative_slope": 0.2})
    with pytest.raises(HiennuError, match=r"network.negative_slope: trained with 0.01, now 0.2"):
        _train(epochs=3, resume=True)
    _edit_preprocessed_plans(tiny, **{"network.negative_slope": 0.01})
    out = _train(epochs=3, resume=True)  # finished now
    _edit_preprocessed_plans(tiny, **{"network.negative_slope": 0.2})
    _train(epochs=3, resume=True)
    assert "(already finished)" in (out / "training_log.txt").read_text()


# ----------------------------------------------------------------------------- finished work

def test_continue_with_only_checkpoint_final_does_not_overwrite_it(tiny):
    out = _train()
    assert not (out / "checkpoint_latest.pth").exists()  # a finished run keeps no checkpoint_latest
    before = {name: (out / name).read_bytes() for name in ("checkpoint_final.pth", "checkpoint_best.pth")}
    _train(resume=True)
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
    assert "continuing from checkpoint_final.pth" in (out / "training_log.txt").read_text()


def test_continue_with_only_checkpoint_best_refuses(tiny):
    out = _train()
    assert not (out / "checkpoint_latest.pth").exists()  # a finished run keeps no checkpoint_latest
    (out / "checkpoint_final.pth").unlink()
    best = (out / "checkpoint_best.pth").read_bytes()
    with pytest.raises(HiennuError, match="holds checkpoint_best.pth but no checkpoint_latest.pth.*overwrite"):
        _train(resume=True)
    assert (out / "checkpoint_best.pth").read_bytes() == best


def test_a_fresh_start_refuses_a_fold_with_only_a_best_checkpoint(tiny):
    out = _train()
    assert not (out / "checkpoint_latest.pth").exists()  # a finished run keeps no checkpoint_latest
    (out / "checkpoint_final.pth").unlink()
    with pytest.raises(HiennuError, match="already holds a training"):
        _train()


class _Unpicklable:
    pass


def test_corrupt_checkpoint_message_is_short_and_does_not_advise_starting_over(tiny, tmp_path):
    out = _train()
    (out / "checkpoint_latest.pth").write_bytes(b"garbage")
    with pytest.raises(HiennuError) as info:
        _train(resume=True)
    message = str(info.value)
    assert "checkpoint_latest.pth" in message and "delete it and re-train" not in message
    assert "never starts over" in message and "\n" not in message
    foreign = tmp_path / "foreign.pth"
    torch.save({"network_weights": {}, "object": _Unpicklable()}, foreign)
    from hiennu.io.checkpoint import load_checkpoint
    with pytest.raises(HiennuError) as info:
        load_checkpoint(foreign)
    assert "\n" not in str(info.value) and len(str(info.value)) < 700


# ----------------------------------------------------------------------------- the fold lock

def _write_lock(folder, **record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "hostname": platform.node(),
                                                "started": "2026-01-01 00:00:00", **record}))


def test_a_second_run_of_the_same_fold_refuses_naming_the_holder(tiny):
    folder = fold_dir(tiny["hiennu_results"], "TrainerDice")
    _write_lock(folder)  # a live holder: this very process
    with pytest.raises(FoldLockedError) as info:
        _train()
    message = str(info.value)
    assert f"pid {os.getpid()} on host {platform.node()}" in message and "2026-01-01 00:00:00" in message
    assert not (folder / "checkpoint_latest.pth").exists() and not (folder / "training_log.txt").exists()


def test_a_stale_lock_of_a_dead_process_is_replaced(tiny):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = fold_dir(tiny["hiennu_results"], "TrainerDice")
    _write_lock(folder, pid=dead.pid)
    out = _train()
    assert (out / "checkpoint_final.pth").is_file() and not (out / LOCK_NAME).exists()


def test_a_lock_from_another_host_names_it_and_how_to_clear_it(tmp_path):
    _write_lock(tmp_path / "fold_0", hostname="other-node-17", pid=4242)
    with pytest.raises(FoldLockedError, match=r"pid 4242 on host other-node-17.*delete .*training.lock"):
        FoldLock(tmp_path / "fold_0").acquire()


def test_lock_is_exclusive_and_released(tmp_path):
    with FoldLock(tmp_path / "f") as lock:
        assert lock.path.is_file()
        with pytest.raises(FoldLockedError):
            FoldLock(tmp_path / "f").acquire()
    assert not (tmp_path / "f" / LOCK_NAME).exists()


def test_a_finished_run_releases_its_lock(tiny):
    out = _train()
    assert not (out / LOCK_NAME).exists()
    assert load(out / "checkpoint_final.pth")["finished"] is True


SLOW_TRAINER = """
import os, time
from pathlib import Path
from hiennu.training.trainers import TrainerDice

class TrainerHeld(TrainerDice):
    def build_batches(self):
        Path(os.environ["HIENNU_TEST_MARKER"]).write_text("training")
        time.sleep(120)
        return super().build_batches()
"""


def test_two_real_runs_of_one_fold_the_second_refuses_naming_the_first(tiny, tmp_path):
    import time
    from hiennu.training.launch import train

    mod = write_module(tmp_path, "held_trainers", SLOW_TRAINER)
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               HIENNU_TEST_MARKER=str(marker), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "hiennu.cli.train", "Tiny", f"{mod}:TrainerHeld", "0", "--epochs", "1",
           "--device", "cpu", "--num-workers", "0", "--no-final-validation", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.1)
        with pytest.raises(FoldLockedError, match=rf"being trained by another run \(pid {proc.pid} on host"):
            train(options(**QUICK), f"{mod}:TrainerHeld")
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    out = fold_dir(tiny["hiennu_results"], "TrainerHeld")
    assert (out / LOCK_NAME).is_file()  # the killed run's lock stays behind ...
    os.environ["HIENNU_TEST_MARKER"] = str(tmp_path / "marker2")
    try:
        import held_trainers
        held_trainers.TrainerHeld.build_batches = held_trainers.TrainerDice.build_batches
        train(options(**QUICK), f"{mod}:TrainerHeld")  # ... and is stale: the next run takes it
    finally:
        os.environ.pop("HIENNU_TEST_MARKER", None)
    assert (out / "checkpoint_final.pth").is_file() and not (out / LOCK_NAME).exists()
