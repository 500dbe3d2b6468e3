"""Averaging sigmoid probabilities over the folds of a model, with optional mirroring test-time augmentation.

Each fold's network predicts logits ``(B, 1, z, y, x)`` on the fixed grid; the ensemble returns
the mean of ``sigmoid(logits)`` over every fold and every mirroring (an equal weight each), as
float32 ``(B, z, y, x)``. Mirroring flips the input along a subset of the spatial axes, predicts,
and flips the prediction back; with axes ``A`` all ``2**len(A)`` subsets are used (nnU-Net's
scheme). The networks run as :mod:`hiennu.device` says, as in training (on CUDA under bfloat16
autocast in ``channels_last_3d`` memory format); the sigmoid and the average are float32.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
from torch import nn

from hiennu.device import autocast, memory_format


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of the spatial ``axes`` (0 = z, 1 = y, 2 = x), the empty one (no flip) first."""
    axes = sorted(set(int(a) for a in axes))
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror axes must be spatial axes 0 (z), 1 (y) or 2 (x), got {axes}")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class FoldEnsemble:
    """The networks of one or more folds, evaluated together.

    networks: one module per fold (moved to ``device`` and put in eval mode here);
    mirror_axes: spatial axes to mirror over (empty or None: no test-time augmentation).
    cpu_bf16: bfloat16 autocast on a CPU too (:func:`hiennu.device.autocast`).
    """

    def __init__(self, networks: Sequence[nn.Module], device: torch.device | str = "cpu",
                 mirror_axes: Sequence[int] | None = None, cpu_bf16: bool = False):
        if not networks:
            raise ValueError("an ensemble needs at least one network")
        self.device = torch.device(device)
        self.memory_formats = [memory_format(self.device, n) for n in networks]
        self.networks = [n.to(self.device, memory_format=f).eval() for n, f in zip(networks, self.memory_formats)]
        self.flips = mirror_combinations(mirror_axes or ())
        self.cpu_bf16 = bool(cpu_bf16)

    @property
    def passes_per_case(self) -> int:
        """Forward passes per case: folds x mirrorings."""
        return len(self.networks) * len(self.flips)

    @torch.inference_mode()
    def predict_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean sigmoid probability ``(B, z, y, x)`` float32 on the ensemble's device.

        batch: ``(B, C, z, y, x)`` normalized input on the grid (any device; moved here).
        """
        if batch.ndim != 5:
            raise ValueError(f"expected a (B, C, z, y, x) batch, got shape {tuple(batch.shape)}")
        batch = batch.to(self.device, dtype=torch.float32, non_blocking=True)
        total = torch.zeros((batch.shape[0],) + tuple(batch.shape[2:]), dtype=torch.float32, device=self.device)
        for net, fmt in zip(self.networks, self.memory_formats):
            x = batch.contiguous(memory_format=fmt)
            for flip in self.flips:
                dims = [d + 2 for d in flip]
                xin = torch.flip(x, dims) if dims else x
                with autocast(self.device, self.cpu_bf16):
                    logits = net(xin)
                if isinstance(logits, (list, tuple)):
                    logits = logits[0]
                logits = logits[:, 0].float()
                if dims:
                    logits = torch.flip(logits, [d - 1 for d in dims])
                total += torch.sigmoid(logits)
        return total / self.passes_per_case
