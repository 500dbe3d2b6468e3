"""benchmarks/bench_conv_layers.py: it finds every convolution of the step, times the gradients autograd computes,
and reports on a tiny network."""

from __future__ import annotations

import dataclasses
import json

import torch

from hiennu.networks.unet import build_network
from hiennu.plans import Plans, save_plans
from helpers import load_benchmark


def _tiny_configuration():
    base = load_benchmark("bench_cpu_step").default_configuration()
    return dataclasses.replace(base, patch_size_zyx=[8, 16, 16],
                               network=dataclasses.replace(base.network, features_per_stage=[4, 8, 16, 32]),
                               training=dataclasses.replace(base.training, batch_size=2, cpu_bf16=False))


def test_every_convolution_is_found_with_its_count():
    bench = load_benchmark("bench_conv_layers")
    config = _tiny_configuration()
    network = build_network(config.network).train()
    calls = bench.conv_calls(network, torch.randn(2, 2, 8, 16, 16))
    # 4 encoder and 3 decoder blocks of two convolutions, 3 transposed up-samplings, the full-resolution head
    assert sum(calls.values()) == 8 + 6 + 3 + 1
    assert sum(n for c, n in calls.items() if c.transposed) == 3
    first = next(c for c in calls if c.input_shape == (2, 2, 8, 16, 16))
    assert first.weight_shape == (4, 2, 3, 3, 3) and calls[first] == 1 and not first.transposed
    assert first.label == "2->4 3x3x3 stride 1 on 8x16x16"


def test_the_timed_gradients_are_autograds():
    bench = load_benchmark("bench_conv_layers")
    for transposed, weight, stride, padding, bias in ((False, (4, 3, 3, 3, 3), (1, 1, 1), (1, 1, 1), False),
                                                       (True, (8, 4, 2, 2, 2), (2, 2, 2), (0, 0, 0), True)):
        call = bench.ConvCall(transposed, (2, weight[0] if transposed else weight[1], 4, 6, 6), weight, stride,
                              padding, bias)
        for layout in bench.LAYOUTS.values():
            torch.manual_seed(3)
            timers = bench.conv_timers(call, layout)
            torch.manual_seed(3)  # the same random x, w and upstream gradient as the timers drew
            x = torch.randn(call.input_shape).requires_grad_()
            w = torch.randn(weight).requires_grad_()
            b = torch.zeros(weight[1] if transposed else weight[0], requires_grad=True) if bias else None
            conv = torch.nn.functional.conv_transpose3d if transposed else torch.nn.functional.conv3d
            y = conv(x, w, b, stride=stride, padding=padding)
            g = torch.randn_like(y)
            y.backward(g)
            assert torch.allclose(timers["forward"](), y.detach(), atol=1e-5)
            grad_input, grad_weight, _ = timers["both"]()
            assert torch.allclose(grad_input, x.grad, atol=1e-4) and torch.allclose(grad_weight, w.grad, atol=1e-4)
            assert timers["input_grad"]()[1] is None and timers["weight_grad"]()[0] is None


def test_the_command_on_tiny_plans(tmp_path, capsys):
    bench = load_benchmark("bench_conv_layers")
    plans = tmp_path / "plans.json"
    save_plans(Plans(dataset_name="Dataset001_Tiny", channel_names=["ADC", "ZADC"],
                     configurations={"3d_fullres": _tiny_configuration()}), plans)
    assert bench.main(["--plans", str(plans), "--rounds", "1", "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "whole step (forward, mean, backward, AdamW): contiguous" in out
    assert "| 4->4 3x3x3 stride 1 on 8x16x16 | 2 |" in out and "| aten::" in out
    record = json.loads((tmp_path / "out.json").read_text())
    assert sum(row["count"] for row in record["table"]) == 18 and len(record["raw_seconds"]["step/contiguous"]) == 1
