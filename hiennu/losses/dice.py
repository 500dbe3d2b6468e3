"""Soft Dice loss on sigmoid probabilities (MONAI's ``DiceLoss(sigmoid=True)``).

Per sample, with p = sigmoid(logits), g the target and sums over all voxels:
``Dice = 1 - (2 Σ p g + smooth_nr) / (Σ p + Σ g + smooth_dr)``, smooth_nr = smooth_dr = 1e-5.
An empty target gives ``1 - smooth / (Σ p + smooth)``: 0 only when the predicted mass Σ p is far below
smooth (1e-5), which sigmoid outputs over a patch hardly ever are, so in practice nearly 1 whatever the
prediction (a lesion-free sample pushes its probabilities down; no NaN: the denominator is at least smooth_dr).
"""

from __future__ import annotations

import torch

from hiennu.losses.base import SegmentationLoss, spatial_sum


def soft_dice_per_sample(probs: torch.Tensor, target: torch.Tensor, smooth_nr: float = 1e-5,
                         smooth_dr: float = 1e-5) -> torch.Tensor:
    """``1 - (2 Σpg + smooth_nr) / (Σp + Σg + smooth_dr)`` per sample, ``(B,)``."""
    intersection = spatial_sum(probs * target)
    denominator = spatial_sum(probs) + spatial_sum(target)
    return 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)


class DiceLoss(SegmentationLoss):
    """Soft Dice loss of sigmoid(logits) against a binary target (see module docstring)."""

    def __init__(self, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean"):
        super().__init__(reduction)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_per_sample(torch.sigmoid(logits), target, self.smooth_nr, self.smooth_dr)
