"""The exponential moving average of the weights (``training.weight_ema``): the rule, what validates and
ships, and the checkpoint round trip of ``--continue``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hiennu.plans import PlansError, load_plans, plans_from_dict, save_plans
from hiennu.training.weight_average import WeightAverage
from helpers import DATASET, fold_dir, load, make_tiny_dataset, options


def test_the_average_follows_the_ema_rule_and_the_first_step_copies():
    net = nn.Linear(2, 1, bias=False)
    average = WeightAverage(net, 0.75)
    for value, expected in ((4.0, 4.0), (0.0, 3.0), (8.0, 4.25)):  # 0.75 * avg + 0.25 * w
        with torch.no_grad():
            net.weight.fill_(value)
        average.update(net)
        torch.testing.assert_close(average.module.weight, torch.full((1, 2), expected))
    assert average.count == 3
    average.load({"weight": torch.ones(1, 2)}, 7)
    assert average.count == 7 and float(average.module.weight.detach().sum()) == 2.0


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="weight_ema"):
        WeightAverage(nn.Linear(1, 1), decay)


def test_plans_refuse_a_decay_of_one():
    from dataclasses import asdict
    from helpers import tiny_plans
    d = asdict(tiny_plans())
    next(iter(d["configurations"].values()))["training"]["weight_ema"] = 1.0
    with pytest.raises(PlansError, match="weight_ema"):
        plans_from_dict(d)


def _with_ema(root, decay=0.9):
    path = root / DATASET / "plans.json"
    plans = load_plans(path)
    plans.configuration().training.weight_ema = decay
    save_plans(plans, path)


def test_the_final_checkpoint_ships_the_averaged_weights(hiennu_roots):
    from hiennu.training.trainers import TrainerDice
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], dropout=0.0)
    _with_ema(hiennu_roots["hiennu_preprocessed"])
    trainer = TrainerDice(options(epochs=2))
    assert trainer.average is not None
    out = trainer.run()
    final = load(out / "checkpoint_final.pth")
    assert "training_weights" not in final  # shipped checkpoints hold the averaged weights only
    averaged = {k: v.cpu() for k, v in trainer.average.module.state_dict().items()}
    trained = {k: v.cpu() for k, v in trainer.network.state_dict().items()}
    assert all(torch.equal(final["network_weights"][k], averaged[k]) for k in averaged)
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained if trained[k].is_floating_point())


def test_latest_checkpoint_carries_trained_and_averaged_weights(hiennu_roots):
    from hiennu.training.trainers import TrainerDice
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], dropout=0.0)
    _with_ema(hiennu_roots["hiennu_preprocessed"], 0.5)
    trainer = TrainerDice(options(epochs=3))
    trainer._setup()
    batches = trainer.build_batches()
    try:
        trainer._run_epoch(batches, 0)
    finally:
        batches.close()
    latest = load(fold_dir(hiennu_roots["hiennu_results"], "TrainerDice") / "checkpoint_latest.pth")
    assert latest["weight_average_count"] == trainer.iterations_per_epoch
    resumed = TrainerDice(options(epochs=3, resume=True))
    resumed._setup()
    for name, value in trainer.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[name].cpu(), value.cpu())
    for name, value in trainer.average.module.state_dict().items():
        assert torch.equal(resumed.average.module.state_dict()[name].cpu(), value.cpu())
    assert resumed.average.count == trainer.average.count
