"""Data-parallel training on CPU: 2 gloo processes match one process on the same global batch."""

from __future__ import annotations

import json
import os

import pytest
import torch

from helpers import fold_dir, load, make_tiny_dataset, options, write_module

TRAINERS = """
from hiennu.training.trainers import TrainerDice

class TrainerOneProcess(TrainerDice):
    pass

class TrainerTwoProcesses(TrainerDice):
    pass
"""


@pytest.mark.slow  # ~25-30 s on the shared 2-core box: two spawned ranks each import torch and hiennu
@pytest.mark.parametrize("patch", [False, True], ids=["grid", "patch"])
def test_two_gloo_processes_match_a_single_process(hiennu_roots, tmp_path, monkeypatch, patch):
    # dropout 0: dropout masks are drawn per rank, so only a dropout-free network can match exactly
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], dropout=0.0, patch=patch)
    mod = write_module(tmp_path, "ddp_trainers", TRAINERS)
    from hiennu.training.launch import train

    single = load(train(options(epochs=1, iterations_per_epoch=2), f"{mod}:TrainerOneProcess") / "checkpoint_final.pth")

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned ranks sum floats in the same order as this process
    train(options(epochs=1, iterations_per_epoch=2, num_gpus=2), f"{mod}:TrainerTwoProcesses")
    out = fold_dir(hiennu_roots["hiennu_results"], "TrainerTwoProcesses")
    ddp = load(out / "checkpoint_final.pth")
    assert ddp["world_size"] == 2 and json.loads((out / "debug.json").read_text())["world_size"] == 2
    # the checkpoint of a DDP run holds plain network keys (no "module." prefix), loadable anywhere
    assert set(ddp["network_weights"]) == set(single["network_weights"])
    for key, value in single["network_weights"].items():
        torch.testing.assert_close(ddp["network_weights"][key], value, rtol=1e-4, atol=2e-5, msg=key)
    assert ddp["progress"]["train_loss"] == pytest.approx(single["progress"]["train_loss"], rel=1e-4)
    assert ddp["progress"]["val_dice"] == pytest.approx(single["progress"]["val_dice"], abs=1e-6)
    assert len(ddp["rng_states"]) == 2  # every rank's random state, for an exact --continue


@pytest.mark.parametrize("dims", [3, 2])
def test_global_batchnorm_matches_batchnorm_over_the_whole_batch(tmp_path, dims):
    """The CPU stand-in for SyncBatchNorm, checked without processes: with one rank it must equal
    BatchNorm3d (a 3D network's) or BatchNorm2d (a 2D network's slices) in output, gradients and running
    statistics; the conversion reaches both (BatchNorm2d was left per process on CPU)."""
    import torch.distributed as dist
    from hiennu.training.distributed import GlobalBatchNorm2d, GlobalBatchNorm3d, convert_batchnorm
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'store'}")
    try:
        torch.manual_seed(0)
        plain, synced = (torch.nn.BatchNorm3d, GlobalBatchNorm3d) if dims == 3 else (torch.nn.BatchNorm2d,
                                                                                    GlobalBatchNorm2d)
        x = torch.randn(3, 4, *(5, 6, 7)[3 - dims:], requires_grad=True)
        bn = plain(4)
        gbn = convert_batchnorm(torch.nn.Sequential(plain(4)), "cpu")[0]
        assert type(gbn) is synced
        y1, y2 = bn(x), gbn(x)
        torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
        w = torch.randn_like(y1)
        g1, = torch.autograd.grad((y1 * w).sum(), x)
        g2, = torch.autograd.grad((y2 * w).sum(), x)
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gbn.running_mean, bn.running_mean)
        torch.testing.assert_close(gbn.running_var, bn.running_var)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned ranks, ~30 s
def test_under_a_time_budget_two_gloo_processes_take_the_same_rate_and_stop_together(hiennu_roots, tmp_path,
                                                                                      monkeypatch):
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], dropout=0.0)
    path = hiennu_roots["hiennu_preprocessed"] / "Dataset001_Tiny" / "plans.json"
    plans = json.loads(path.read_text())
    for config in plans["configurations"].values():
        config["training"]["lr_schedule"] = "poly"
    path.write_text(json.dumps(plans))
    # rank 1 is slower than rank 0, so their own clocks would disagree on when the budget ran out
    mod = write_module(tmp_path, "ddp_budget_trainers", """
        import time
        from hiennu.training.trainers import TrainerDice
        class TrainerUneven(TrainerDice):
            def _train_step(self, data, target):
                time.sleep(0.05 + 0.1 * self.dist.rank)
                return super()._train_step(data, target)
        """)
    from hiennu.training.launch import train
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    train(options(epochs=50, patience=50, iterations_per_epoch=2, num_gpus=2, time_budget_minutes=1.0 / 60),
          f"{mod}:TrainerUneven")
    out = fold_dir(hiennu_roots["hiennu_results"], "TrainerUneven")
    final = load(out / "checkpoint_final.pth")
    epochs = final["progress"]["epoch"]
    assert final["world_size"] == 2 and 1 <= len(epochs) < 50
    lrs = final["progress"]["lr"]
    assert all(b < a for a, b in zip(lrs, lrs[1:]))  # the poly rate fell with the shared clock
