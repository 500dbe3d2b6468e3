"""Tversky loss (Salehi et al. 2017; MONAI's ``TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)``).

Per sample, with p = sigmoid(logits): TP = Σ p g, FP = Σ p (1 - g), FN = Σ (1 - p) g and
``Tversky = 1 - (TP + smooth_nr) / (TP + α FP + β FN + smooth_dr)``; α = 0.3 weighs false positives,
β = 0.7 false negatives (β > α favours recall, as wanted for small lesions). α = β = 0.5 is Dice.
"""

from __future__ import annotations

import torch

from hiennu.losses.base import SegmentationLoss, spatial_sum


def tversky_per_sample(probs: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
                       smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> torch.Tensor:
    """``1 - (TP + smooth_nr) / (TP + alpha FP + beta FN + smooth_dr)`` per sample, ``(B,)``."""
    tp = spatial_sum(probs * target)
    fp = spatial_sum(probs * (1.0 - target))
    fn = spatial_sum((1.0 - probs) * target)
    return 1.0 - (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)


class TverskyLoss(SegmentationLoss):
    """Tversky loss; ``alpha`` weighs false positives, ``beta`` false negatives."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 reduction: str = "mean"):
        super().__init__(reduction)
        self.alpha, self.beta = float(alpha), float(beta)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return tversky_per_sample(torch.sigmoid(logits), target, self.alpha, self.beta,
                                  self.smooth_nr, self.smooth_dr)
