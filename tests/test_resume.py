"""--continue after a run is killed (SIGKILL) in the middle of an epoch ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import fold_dir, load, make_tiny_dataset, options, write_module

TRAINERS = """
import os, time
from pathlib import Path
from hiennu.training.trainers import TrainerDice

class TrainerReference(TrainerDice):
    pass

class TrainerKilled(TrainerDice):
    def build_batches(self):
        batches = super().build_batches()
        marker = os.environ.get("HIENNU_TEST_MARKER")
        if not marker:
            return batches
        original = batches.epoch
        def epoch(e, iterations):
            for i, batch in enumerate(original(e, iterations)):
                if e == 1 and i == 1:  # mid-epoch 1: announce, then wait to be killed
                    Path(marker).write_text("in epoch 1")
                    time.sleep(120)
                yield batch
        batches.epoch = epoch
        return batches
"""


@pytest.mark.parametrize("patch", [False, True], ids=["grid", "patch"])
def test_resume_after_sigkill_mid_epoch_matches_an_uninterrupted_run(hiennu_roots, tmp_path, patch):
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], patch=patch)
    mod = write_module(tmp_path, "resume_trainers", TRAINERS)
    from hiennu.training.launch import train

    kw = dict(epochs=3, iterations_per_epoch=2)
    reference = load(train(options(**kw), f"{mod}:TrainerReference") / "checkpoint_final.pth")

    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               HIENNU_TEST_MARKER=str(marker), OMP_NUM_THREADS="1")  # same threads as this process: same float sums
    cmd = [sys.executable, "-m", "hiennu.cli.train", "Tiny", f"{mod}:TrainerKilled", "0", "--epochs", "3",
           "--iterations-per-epoch", "2", "--device", "cpu", "--num-workers", "0", "--seed", "7",
           "--no-final-validation", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "training never reached epoch 1"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    out = fold_dir(hiennu_roots["hiennu_results"], "TrainerKilled")
    assert load(out / "checkpoint_latest.pth")["epoch"] == 0  # epoch 1 never finished
    assert not (out / "checkpoint_final.pth").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written temporaries left visible as checkpoints

    resumed = load(train(options(resume=True, **kw), f"{mod}:TrainerKilled") / "checkpoint_final.pth")
    assert resumed["epoch"] == reference["epoch"] == 2
    for key, value in reference["network_weights"].items():
        assert torch.equal(value, resumed["network_weights"][key]), key
    assert resumed["progress"]["train_loss"] == reference["progress"]["train_loss"]
    assert resumed["progress"]["val_dice"] == reference["progress"]["val_dice"]
    assert "optimizer_state" not in resumed and not (out / "checkpoint_latest.pth").exists()


def test_continue_on_a_finished_fold_does_nothing(hiennu_roots):
    """A finished run keeps checkpoint_final.pth only; --continue reads it and trains nothing."""
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    from hiennu.training.launch import train
    out = train(options(epochs=1, iterations_per_epoch=1, final_validation=False), "TrainerDice")
    assert {p.name for p in out.glob("checkpoint_*.pth")} == {"checkpoint_best.pth", "checkpoint_final.pth"}
    before = (out / "checkpoint_final.pth").stat().st_mtime_ns
    train(options(epochs=1, iterations_per_epoch=1, final_validation=False, resume=True), "TrainerDice")
    log = (out / "training_log.txt").read_text()
    assert "(already finished)" in log and log.count("epoch 0: train loss") == 1
    assert (out / "checkpoint_final.pth").stat().st_mtime_ns == before
