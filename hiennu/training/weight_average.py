"""An exponential moving average of the network's weights (``TrainingPlan.weight_ema``).

torch's :class:`~torch.optim.swa_utils.AveragedModel` with its EMA rule does the averaging (parameters
and buffers, ``w_avg <- d w_avg + (1 - d) w`` after each optimizer step, the first step copying); this
module only adds what the trainer needs around it: which weights predict, and the checkpoint round trip.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The averaged copy of ``network``, updated with :meth:`update` after each optimizer step."""

    def __init__(self, network: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight_ema must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.averaged = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)

    @property
    def module(self) -> nn.Module:
        """The network with the averaged weights (what validates and what the checkpoints ship)."""
        return self.averaged.module

    @property
    def count(self) -> int:
        """Optimizer steps averaged so far."""
        return int(self.averaged.n_averaged.item())

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        self.averaged.update_parameters(network)

    def load(self, weights: dict[str, torch.Tensor], count: int) -> None:
        """Restore the averaged weights (a state dict of the network) and the number of steps averaged."""
        self.module.load_state_dict(weights)
        self.averaged.n_averaged.fill_(int(count))
