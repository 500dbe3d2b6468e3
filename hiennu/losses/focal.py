"""Sigmoid focal loss (Lin et al. 2017; MONAI's ``FocalLoss(gamma=2)`` without class weight).

Per sample: the mean over voxels of ``(1 - p_t)^γ · BCE(logit, g)`` with p_t = p where g = 1
and 1 - p where g = 0, γ = 2. ``(1 - p_t)^γ`` is evaluated as ``exp(γ · logsigmoid(∓logit))``,
which stays finite for any logit; BCE is the logits form (no log of a rounded probability).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hiennu.losses.base import SegmentationLoss, spatial_mean


def focal_per_sample(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over voxels of ``(1 - p_t)^gamma · BCE`` per sample, ``(B,)``."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    # 1 - p_t = sigmoid(-logit) where g = 1 and sigmoid(logit) where g = 0
    modulation = torch.exp(gamma * F.logsigmoid(-logits * (2.0 * target - 1.0)))
    return spatial_mean(modulation * bce)


class FocalLoss(SegmentationLoss):
    """Sigmoid focal loss with focusing parameter ``gamma`` (default 2)."""

    def __init__(self, gamma: float = 2.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.gamma = float(gamma)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_per_sample(logits, target, self.gamma)
