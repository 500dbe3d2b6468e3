"""Analytic GPU-memory estimate of one training step of the U-Net, used by the memory-aware grid policy.

What a training step holds at its peak (backward pass start):

- activations saved for backward, per sample and per voxel of each stage's resolution. Counted
  tensor by tensor for :class:`~hiennu.networks.unet.UNet3D` (conv -> BN -> LeakyReLU(inplace) x 2
  -> dropout; max-pool; transpose conv; concatenation):
    encoder stage s: ``c_in + 4 f`` values (conv inputs, BN inputs, activation outputs),
    ``+ f`` when the stage has dropout (its output is a new tensor the next layer saves);
    decoder stage s: ``2 f`` (the concatenation) ``+ 4 f``, ``+ f`` with dropout;
    max-pool after stage s: ``f`` int64 indices at the next stage's resolution.
  Feature maps are stored at ``activation_bytes`` each (2 under bf16 autocast, 4 in fp32).
- weights in fp32, their gradients and AdamW's two moments: 16 bytes per parameter.
- a safety factor on the activations for transient gradient buffers and allocator fragmentation,
  plus a fixed reserve for the CUDA context and cuDNN workspaces.

The activation count is checked against a measurement: ``tests/test_planning.py`` runs a forward
pass of the built network on CPU in fp32 with ``torch.autograd.graph.saved_tensors_hooks``, adds up
the distinct storages autograd keeps (parameters excluded) and asserts the formula matches it
within 1%. (The probe lives in the test so that planning never imports the network code.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from hiennu.plans import NetworkPlan

GIB = 1024 ** 3
ACTIVATION_SAFETY = 1.25
RESERVE_BYTES = 1.0 * GIB
BYTES_PER_PARAMETER = 16


@dataclass
class MemoryEstimate:
    """Bytes of one training step at grid ``size_zyx`` and ``batch_size``."""

    size_zyx: tuple[int, int, int]
    batch_size: int
    activation_bytes: int
    parameter_bytes: int
    reserve_bytes: int
    total_bytes: int

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_gib"] = round(self.total_gib, 3)
        return d


def count_parameters(plan: NetworkPlan) -> int:
    """Number of trainable parameters of the U-Net ``plan`` builds (counted without building it)."""
    k3 = plan.kernel_size ** 3
    feats = list(plan.features_per_stage)
    n = 0

    def block(c_in: int, f: int) -> int:
        return c_in * f * k3 + f * f * k3 + 4 * f  # two bias-free convs + two BN (weight, bias)

    c_in = plan.in_channels
    for f in feats:
        n += block(c_in, f)
        c_in = f
    for s in reversed(range(len(feats) - 1)):
        pool = math.prod(plan.pool_kernel_sizes[s])
        n += feats[s + 1] * feats[s] * pool + feats[s]  # transpose conv with bias
        n += block(2 * feats[s], feats[s])
        n += feats[s] * plan.out_channels + plan.out_channels  # 1x1x1 head (every stage has one)
    return n


def saved_activation_bytes(plan: NetworkPlan, size_zyx: Sequence[int], batch_size: int = 1,
                           activation_bytes: int = 2) -> int:
    """Bytes autograd keeps for backward in one forward pass (the formula in the module docstring)."""
    feats = list(plan.features_per_stage)
    voxels = [math.prod(size_zyx)]
    for k in plan.pool_kernel_sizes:
        voxels.append(voxels[-1] // math.prod(k))
    values = 0
    index_values = 0
    c_in = plan.in_channels
    last = len(feats) - 1
    for s, f in enumerate(feats):
        drop = 1 if plan.dropout_per_stage[s] > 0 else 0
        values += (c_in + 4 * f + drop * f) * voxels[s]
        if s < last:
            values += (6 * f + drop * f) * voxels[s]
            index_values += f * voxels[s + 1]
        c_in = f
    return batch_size * (values * activation_bytes + index_values * 8)


def estimate_training_memory(plan: NetworkPlan, size_zyx: Sequence[int], batch_size: int,
                             activation_bytes: int = 2) -> MemoryEstimate:
    """Peak GPU memory of one training step (bf16 autocast by default), in bytes."""
    act = saved_activation_bytes(plan, size_zyx, batch_size, activation_bytes)
    params = BYTES_PER_PARAMETER * count_parameters(plan)
    total = int(ACTIVATION_SAFETY * act) + params + int(RESERVE_BYTES)
    return MemoryEstimate(tuple(int(s) for s in size_zyx), batch_size, act, params, int(RESERVE_BYTES), total)

