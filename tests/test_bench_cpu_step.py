"""benchmarks/bench_cpu_step.py: its phased step is the trainer's own step, and its summaries add up."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from hiennu.plans import PLANS_NAME
from helpers import load_benchmark

def _bench():
    return load_benchmark("bench_cpu_step")


def test_phased_step_matches_the_trainer_step(hiennu_roots):
    bench = _bench()
    base = bench.default_configuration()
    config = dataclasses.replace(
        base, patch_size_zyx=[8, 16, 16],
        network=dataclasses.replace(base.network, features_per_stage=[4, 8, 16, 32]),
        training=dataclasses.replace(base.training, num_workers=0, cpu_bf16=False))
    name = bench.make_random_dataset(hiennu_roots["hiennu_preprocessed"], config, n_cases=5)
    args = argparse.Namespace(dataset=name, config="3d_fullres", workers=0, plans_name=PLANS_NAME,
                              trainer="TrainerDiceFocal")
    own, phased = bench.build_trainer(args, False), bench.build_trainer(args, False)
    for a, b in zip(own.network.parameters(), phased.network.parameters()):
        assert torch.equal(a, b)
    data, target = next(iter(bench.batches_for(own, 0).epoch(0, 1)))

    torch.manual_seed(1)  # dropout draws from the global generator
    loss_own = own._train_step(data, target)
    torch.manual_seed(1)
    loss_phased, phases = bench.phased_step(phased, data, target)
    assert torch.equal(loss_own, loss_phased)
    for a, b in zip(own.network.parameters(), phased.network.parameters()):
        assert torch.equal(a, b)
    assert set(phases) == {"copy", "forward", "loss", "backward", "l1_clip", "optimizer"}
    assert all(v >= 0 for v in phases.values())

    block = bench.planned_block(own, bench.batches_for(own, 0), 2, 0, torch.get_num_threads())
    assert [r["own"] for r in block["records"]] == [True, False, True]
    summary = bench.summarize_planned([block], 2 * 8 * 16 * 16)
    assert summary["steady_steps"] == 2
    assert summary["seconds_per_step"] > 0 and summary["voxels_per_second"] > 0
    assert summary["phases"]["forward"] > 0

    step, first = bench.make_bare(own.network, data, False, 1e-3, layout="channels_last_3d")
    assert first > 0 and len(bench.bare_block(step, 2, 1)) == 2


def test_phased_step_updates_the_weight_average_as_the_trainer_step_does(hiennu_roots):
    """With training.weight_ema the trainer's step also updates the averaged weights; the timed copy must too (it
    had fallen behind the trainer: no average update, no context-slice crop of the target)."""
    bench = _bench()
    base = bench.default_configuration()
    config = dataclasses.replace(
        base, patch_size_zyx=[8, 16, 16],
        network=dataclasses.replace(base.network, features_per_stage=[4, 8, 16, 32]),
        training=dataclasses.replace(base.training, num_workers=0, cpu_bf16=False, weight_ema=0.9))
    name = bench.make_random_dataset(hiennu_roots["hiennu_preprocessed"], config, n_cases=5)
    args = argparse.Namespace(dataset=name, config="3d_fullres", workers=0, plans_name=PLANS_NAME,
                              trainer="TrainerDiceFocal")
    own, phased = bench.build_trainer(args, False), bench.build_trainer(args, False)
    assert own.average is not None
    data, target = next(iter(bench.batches_for(own, 0).epoch(0, 1)))
    before = [p.detach().clone() for p in own.predicting_network.parameters()]
    torch.manual_seed(1)
    own._train_step(data, target)
    torch.manual_seed(1)
    bench.phased_step(phased, data, target)
    averaged = list(own.predicting_network.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(averaged, before))   # the average moved
    for a, b in zip(averaged, phased.predicting_network.parameters()):
        assert torch.equal(a, b)
