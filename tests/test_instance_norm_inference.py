"""Instance norm computed by ``F.group_norm`` (one group a channel) in CPU float32 inference
(:class:`hiennu.networks.unet.InstanceNorm3d` / ``InstanceNorm2d``): torch's values, torch's state dict, and torch's
own instance norm wherever autograd, another dtype or running statistics are involved."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from hiennu.networks.unet import InstanceNorm2d, InstanceNorm3d, make_norm

CASES = [(InstanceNorm3d, nn.InstanceNorm3d, (2, 6, 5, 7, 4)), (InstanceNorm2d, nn.InstanceNorm2d, (3, 6, 9, 8))]


def _pair(ours, theirs, channels, **kwargs):
    torch.manual_seed(0)
    reference = theirs(channels, affine=True, **kwargs)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    norm = ours(channels, affine=True, **kwargs)
    norm.load_state_dict(reference.state_dict())
    return norm, reference


def _ops(module, x) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("ours, theirs, shape", CASES)
def test_inference_takes_group_norm_with_instance_norms_values(ours, theirs, shape):
    norm, reference = _pair(ours, theirs, shape[1])
    x = torch.randn(shape) * 3 + 1
    with torch.inference_mode():
        expected = reference(x)
        got = norm(x)
        ops = _ops(norm, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert "aten::group_norm" in ops and "aten::instance_norm" not in ops
    with torch.no_grad():  # no_grad as well as inference_mode
        torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
        assert "aten::group_norm" in _ops(norm, x)


@pytest.mark.parametrize("ours, theirs, shape", CASES)
def test_training_keeps_torchs_instance_norm_and_its_gradients(ours, theirs, shape):
    norm, reference = _pair(ours, theirs, shape[1])
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    assert "aten::instance_norm" in _ops(norm, x)
    (norm(x) ** 2).sum().backward()
    (reference(x_ref) ** 2).sum().backward()
    assert torch.equal(x.grad, x_ref.grad) and torch.equal(norm.weight.grad, reference.weight.grad)


@pytest.mark.parametrize("ours, theirs, shape", CASES)
def test_other_dtypes_and_running_statistics_keep_torchs_instance_norm(ours, theirs, shape):
    norm, reference = _pair(ours, theirs, shape[1])
    with torch.inference_mode():
        double = torch.randn(shape, dtype=torch.float64)
        assert "aten::instance_norm" in _ops(norm.double(), double)
        empty = torch.randn((0,) + shape[1:])
        assert norm.float()(empty).shape == empty.shape  # an empty batch too (torch's own instance norm raises)
    tracked, tracked_reference = _pair(ours, theirs, shape[1], track_running_stats=True)
    tracked.eval(), tracked_reference.eval()
    x = torch.randn(shape)
    with torch.inference_mode():
        assert "aten::instance_norm" in _ops(tracked, x)
        torch.testing.assert_close(tracked(x), tracked_reference(x))


def test_the_networks_norms_are_these_with_torchs_state_dict():
    for dims, cls, theirs in ((3, InstanceNorm3d, nn.InstanceNorm3d), (2, InstanceNorm2d, nn.InstanceNorm2d)):
        norm = make_norm("instance", 8, dims)
        assert type(norm) is cls and isinstance(norm, theirs) and norm.affine
        assert norm.state_dict().keys() == theirs(8, affine=True).state_dict().keys()
        norm.load_state_dict(theirs(8, affine=True).state_dict(), strict=True)
    assert type(make_norm("batch", 8, 3)) is nn.BatchNorm3d
