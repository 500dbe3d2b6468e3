"""hiennu's Conv3d sends a float32 CPU convolution without autograd to oneDNN itself (torch's dispatcher sends a batch
of one with few channels and slices to its slow reference kernel), with the same result; everything else keeps
torch's dispatch. And benchmarks/bench_inference_convolutions.py on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import hiennu.networks.unet as unet
from hiennu.networks.unet import Conv3d, _onednn_applies
from helpers import load_benchmark, make_model_dir, make_varied_raw_dataset

needs_onednn = pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and unet._X86_64),
                                  reason="the route is for x86-64 CPUs with torch built with oneDNN")


def kernels(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@needs_onednn
def test_inference_goes_to_onednn_with_the_same_result():
    torch.manual_seed(0)
    conv = Conv3d(16, 16, 3, padding=1, bias=True)
    x = torch.randn(1, 16, 6, 10, 8)  # 1 x 16 x 6 x 10 = 960 <= 20480: torch itself would pick slow_conv3d
    expected = F.conv3d(x, conv.weight, conv.bias, padding=1)
    with torch.inference_mode():
        names = kernels(lambda: conv(x))
        got = conv(x)
    assert "aten::mkldnn_convolution" in names and not any("slow_conv3d" in n for n in names)
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(conv(x), expected, atol=1e-5)


LAYERS = {"3x3x3": dict(kernel_size=3, padding=1), "stride 2": dict(kernel_size=3, stride=2),
          "dilation 2": dict(kernel_size=3, padding=2, dilation=2), "2 groups": dict(kernel_size=3, padding=1, groups=2),
          "1x3x3": dict(kernel_size=(1, 3, 3), padding=(0, 1, 1)), "1x1x1": dict(kernel_size=1)}
INPUTS = {"contiguous": lambda: torch.randn(1, 4, 5, 9, 7),
          "a strided view": lambda: torch.randn(1, 4, 7, 9, 5).transpose(2, 4),
          "channels last": lambda: torch.randn(1, 4, 5, 9, 7).contiguous(memory_format=torch.channels_last_3d),
          "a batch of 3": lambda: torch.randn(3, 4, 5, 9, 7), "an empty batch": lambda: torch.randn(0, 4, 5, 9, 7)}


@needs_onednn
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("given", INPUTS)
def test_every_layer_and_input_layout_gives_torchs_values(layer, given):
    torch.manual_seed(1)
    conv, x = Conv3d(4, 6, **LAYERS[layer]), INPUTS[given]()
    expected = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    with torch.inference_mode():
        got = conv(x)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)


@needs_onednn
def test_an_input_onednn_refuses_goes_to_torchs_dispatch(monkeypatch):
    conv, x = Conv3d(4, 6, 3, padding=1), torch.randn(1, 4, 5, 9, 7)
    expected = F.conv3d(x, conv.weight, conv.bias, padding=1)

    calls = []

    def refuses(*args):
        calls.append(args)
        raise RuntimeError("mkldnn_convolution: not supported here")

    monkeypatch.setattr(torch.ops.aten, "mkldnn_convolution", refuses)
    with torch.inference_mode():
        assert torch.allclose(conv(x), expected, atol=1e-5)
    assert len(calls) == 1


def test_a_cpu_other_than_x86_64_keeps_torchs_dispatch(monkeypatch):
    monkeypatch.setattr(unet, "_X86_64", False)
    with torch.inference_mode():
        assert not _onednn_applies(Conv3d(4, 4, 3, padding=1), torch.randn(1, 4, 4, 6, 6))


@needs_onednn
def test_training_inputs_and_other_layers_keep_torchs_dispatch(monkeypatch):
    conv = Conv3d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 4, 6, 6)
    with torch.inference_mode():
        assert _onednn_applies(conv, x)
        assert not _onednn_applies(conv, x.bfloat16())
        assert not _onednn_applies(Conv3d(4, 4, 3, padding="same"), x)
        assert not _onednn_applies(Conv3d(4, 4, 3, padding=1, padding_mode="reflect"), x)
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
        assert not _onednn_applies(conv, x)
        monkeypatch.undo()
    assert not _onednn_applies(conv, x)  # autograd on: a training step
    y = conv(x.requires_grad_())
    y.sum().backward()
    reference = x.detach().requires_grad_()
    F.conv3d(reference, conv.weight, conv.bias, padding=1).sum().backward()
    assert y.grad_fn is not None and torch.allclose(x.grad, reference.grad, atol=1e-5)


def test_the_benchmark_on_a_tiny_model(tmp_path, capsys):
    bench = load_benchmark("bench_inference_convolutions")
    model = make_model_dir(tmp_path / "results", folds=(0,), size_xyz=(16, 16, 8))
    raw = make_varied_raw_dataset(tmp_path / "raw", num_cases=2)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:  # the script sets the process's torch threads, which later tests' float sums depend on
        assert bench.main(["-m", str(model), "-i", str(raw / "imagesTr"), "--cases", "2", "--rounds", "2",
                           "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    # tiny_plans: three encoder stages of two convolutions, two decoder stages of two, the head
    assert len(result["convolutions"]) == 2 * 3 + 2 * 2 + 1
    assert all(row["torch_s"] > 0 and row["hiennu_s"] > 0 for row in result["convolutions"])
    # which kernel torch picks is torch's choice (slow_conv3d for these with torch 2.13), not asserted here
    assert {row["torch_picks"] for row in result["convolutions"]} <= {"slow_conv3d_forward", "mkldnn_convolution",
                                                                       "other"}
    assert result["network"]["max_abs_logit_difference"] < 1e-4
    prediction = result["prediction"]
    assert prediction["cases"] == ["case00", "case01"] and len(prediction["torch_s_per_case"]) == 2
    assert prediction["mask_voxels_differing"] == 0
    assert "ratio" in capsys.readouterr().out
