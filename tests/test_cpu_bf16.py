"""bfloat16 autocast on the CPU: opt-in (plans' training.cpu_bf16, --cpu-bf16), float32 otherwise."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import torch
from torch import nn

from hiennu.device import autocast
from hiennu.inference.ensemble import FoldEnsemble
from hiennu.networks.unet import Conv3d, build_network
from hiennu.plans import NetworkPlan
from hiennu.training.fold_layout import effective_training_plan, fold_layout
from hiennu.training.options import TrainingOptions
from helpers import DATASET, make_tiny_dataset, options

CPU = torch.device("cpu")


def test_cpu_autocast_is_float32_unless_asked():
    conv, x = nn.Conv3d(1, 2, 3, padding=1), torch.randn(1, 1, 4, 4, 4)
    with autocast(CPU):
        assert conv(x).dtype == torch.float32
    with autocast(CPU, cpu_bf16=True):
        assert conv(x).dtype == torch.bfloat16


def test_ensemble_with_cpu_bf16_gives_float32_probabilities_close_to_float32():
    plan = NetworkPlan(in_channels=2, features_per_stage=[4, 8], pool_kernel_sizes=[[2, 2, 2]],
                       dropout_per_stage=[0.0, 0.0], norm="instance")
    torch.manual_seed(0)
    net = build_network(plan)
    x = torch.randn(1, 2, 8, 16, 16)
    p32 = FoldEnsemble([net]).predict_probabilities(x)
    p16 = FoldEnsemble([net], cpu_bf16=True).predict_probabilities(x)
    assert p16.dtype == torch.float32 and p16.shape == p32.shape
    assert float((p16 - p32).abs().max()) < 0.05  # bf16 keeps about 3 significant digits
    assert not torch.equal(p16, p32)  # the flag did take effect


def test_bf16_gradients_of_a_convolution_on_two_slices_are_right_and_reproducible():
    """The network of make_tiny_dataset pools 16 slices to 2 at its bottleneck. There oneDNN's bfloat16 backward
    of a 3x3x3 convolution read memory it never wrote (torch 2.13 on an AVX512-BF16 CPU): weight gradients about
    100% off float32's, different each time, NaN when the freed memory held NaN (the random divergence of the
    training test below). hiennu's Conv3d runs such thin inputs in float32. Freed memory is filled with NaN
    before each repeat so that a read of unwritten memory shows."""
    torch.manual_seed(0)
    conv = Conv3d(16, 32, 3, padding=1, bias=False)
    x, grad_out = torch.randn(4, 16, 2, 4, 4), torch.randn(4, 32, 2, 4, 4)
    conv(x).backward(grad_out)
    reference = conv.weight.grad.clone()
    first = None
    for repeat in range(4):
        junk = [torch.full((n,), float("nan")) for n in (1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20) for _ in range(3)]
        del junk
        conv.weight.grad = None
        with autocast(CPU, cpu_bf16=True):
            out = conv(x.bfloat16())
        out.float().backward(grad_out)
        grad = conv.weight.grad
        assert torch.isfinite(grad).all(), f"repeat {repeat}: the weight gradient is not finite"
        error = float((grad - reference).norm() / reference.norm())
        assert error < 0.05, f"repeat {repeat}: the weight gradient is {error:.3f} off float32's (relative)"
        assert first is None or torch.equal(grad, first), f"repeat {repeat}: the weight gradient changed"
        first = grad.clone()
    with autocast(CPU, cpu_bf16=True):  # only thin inputs run in float32
        assert conv(torch.randn(1, 16, 2, 4, 4)).dtype == torch.float32
        assert conv(torch.randn(1, 16, 3, 4, 4)).dtype == torch.bfloat16
    plan = NetworkPlan(features_per_stage=[4, 8, 16, 32], dropout_per_stage=[0.0] * 4)
    assert all(type(m) is Conv3d for m in build_network(plan).modules() if isinstance(m, nn.Conv3d))


def test_the_option_overrides_the_plans_and_none_keeps_them(hiennu_roots):
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    layout = fold_layout("TrainerDice", options())
    assert layout.training.cpu_bf16 is False
    assert effective_training_plan(layout.config, TrainingOptions(dataset=DATASET, cpu_bf16=True)).cpu_bf16 is True
    on = dataclasses.replace(layout.config, training=dataclasses.replace(layout.config.training, cpu_bf16=True))
    assert effective_training_plan(on, TrainingOptions(dataset=DATASET, cpu_bf16=None)).cpu_bf16 is True   # kept
    assert effective_training_plan(on, TrainingOptions(dataset=DATASET, cpu_bf16=False)).cpu_bf16 is False


def test_training_with_cpu_bf16_runs_and_records_it(hiennu_roots):
    from hiennu.training.launch import train
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    folder = train(options(epochs=1, iterations_per_epoch=2, cpu_bf16=True), "TrainerDice")
    debug = json.loads((folder / "debug.json").read_text())
    assert debug["effective_training_plan"]["cpu_bf16"] is True
    progress = json.loads((folder / "progress.json").read_text())
    assert len(progress["train_loss"]) == 1 and np.isfinite(progress["train_loss"][0])
    # the steps really ran in bfloat16: the same seed in float32 ends at other weights
    bf16 = torch.load(folder / "checkpoint_final.pth", weights_only=True)["network_weights"]
    shutil.move(folder, folder.with_name("bf16"))
    fp32 = torch.load(train(options(epochs=1, iterations_per_epoch=2, cpu_bf16=False), "TrainerDice")
                      / "checkpoint_final.pth", weights_only=True)["network_weights"]
    assert bf16.keys() == fp32.keys() and any(not torch.equal(bf16[k], fp32[k]) for k in bf16)
