"""The hybrid losses of the study: weighted sums of the region losses and LogHausdorffDT.

- ``DiceFocal = λ_dice · Dice + λ_focal · Focal`` with λ_dice = λ_focal = 1 (MONAI's ``DiceFocalLoss``).
- ``DiceFocal-HDT = 0.9 · DiceFocal + 0.1 · LogHausdorffDT``.
- ``Tversky-HDT = 0.9 · Tversky + 0.1 · LogHausdorffDT``.

Each part is reduced over the batch first (so the log term is the log of the batch-mean Hausdorff
term, as in the MONAI code the paper ran); with ``reduction="none"`` the sum is per sample.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from hiennu.losses.base import SegmentationLoss, check_reduction
from hiennu.losses.dice import soft_dice_per_sample
from hiennu.losses.focal import focal_per_sample
from hiennu.losses.hausdorff import LogHausdorffDTLoss
from hiennu.losses.tversky import TverskyLoss


class DiceFocalLoss(SegmentationLoss):
    """``lambda_dice · Dice + lambda_focal · Focal`` (defaults 1 and 1; focal γ = 2)."""

    def __init__(self, lambda_dice: float = 1.0, lambda_focal: float = 1.0, gamma: float = 2.0,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean"):
        super().__init__(reduction)
        self.lambda_dice, self.lambda_focal = float(lambda_dice), float(lambda_focal)
        self.gamma = float(gamma)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = soft_dice_per_sample(torch.sigmoid(logits), target, self.smooth_nr, self.smooth_dr)
        return self.lambda_dice * dice + self.lambda_focal * focal_per_sample(logits, target, self.gamma)


class RegionPlusLogHDTLoss(nn.Module):
    """``region_weight · region + hdt_weight · LogHausdorffDT``, both reduced the same way."""

    def __init__(self, region: SegmentationLoss, region_weight: float = 0.9, hdt_weight: float = 0.1,
                 spacing: Sequence[float] | None = None, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.reduction = check_reduction(reduction)
        region.reduction = self.reduction
        self.region = region
        self.log_hdt = LogHausdorffDTLoss(spacing=spacing, reduction=self.reduction, backend=backend)
        self.region_weight, self.hdt_weight = float(region_weight), float(hdt_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.region_weight * self.region(logits, target) + self.hdt_weight * self.log_hdt(logits, target)

    def extra_repr(self) -> str:
        return f"region_weight={self.region_weight}, hdt_weight={self.hdt_weight}, reduction={self.reduction!r}"


class DiceFocalHDTLoss(RegionPlusLogHDTLoss):
    """``0.9 · DiceFocal + 0.1 · LogHausdorffDT`` (the paper's DiceFocal-HDT)."""

    def __init__(self, region_weight: float = 0.9, hdt_weight: float = 0.1,
                 spacing: Sequence[float] | None = None, reduction: str = "mean", backend: str = "auto"):
        super().__init__(DiceFocalLoss(reduction=reduction), region_weight, hdt_weight, spacing, reduction, backend)


class TverskyHDTLoss(RegionPlusLogHDTLoss):
    """``0.9 · Tversky(α=0.3, β=0.7) + 0.1 · LogHausdorffDT`` (the paper's Tversky-HDT)."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, region_weight: float = 0.9, hdt_weight: float = 0.1,
                 spacing: Sequence[float] | None = None, reduction: str = "mean", backend: str = "auto"):
        super().__init__(TverskyLoss(alpha, beta, reduction=reduction), region_weight, hdt_weight, spacing,
                         reduction, backend)
