"""Hausdorff distance-transform losses (Karimi & Salcudean 2019, as implemented by MONAI).

Per sample, with p = sigmoid(logits) and g the target:
``HausdorffDT = mean over voxels of (p - g)² · (d_p^α + d_g^α)``, α = 2, where d_x is the distance
field of the binary mask x (p thresholded at 0.5): at each voxel, the Euclidean distance to the
nearest voxel of the other class (the transform of the foreground plus that of the background,
exactly one of which is non-zero). Fields are in voxels unless ``spacing`` (z, y, x) is given, are
zero for an empty or a full mask, and carry no gradient.

``LogHausdorffDT = log(HausdorffDT + 1)``, applied after the batch reduction as MONAI does: with
``reduction="mean"`` it is the log of the batch mean, with ``"none"`` the log of each sample's value.
"""

from __future__ import annotations

from typing import Sequence

import torch

from hiennu.errors import HiennuError
from hiennu.losses.base import SegmentationLoss, spatial_mean
from hiennu.losses.distance import (check_spacing, resolve_backend, squared_distance_to_other_class,
                                    squared_euclidean_distance_transform)


def hausdorff_distance_field(mask: torch.Tensor, spacing: Sequence[float] | None = None, alpha: float = 2.0,
                             backend: str = "auto") -> torch.Tensor:
    """``d^alpha`` with d the distance of each voxel to the nearest voxel of the other class.

    Args:
        mask: bool ``(B, z, y, x)``.
        spacing: voxel size ``(z, y, x)``; ``None`` measures in voxels.
        alpha: exponent (2 in the design: the squared distance).
        backend: distance-transform back-end (see :mod:`hiennu.losses.distance`).

    Returns:
        float32 ``(B, z, y, x)``, all zero for a sample whose mask is empty or full.
    """
    return summed_hausdorff_fields([mask], spacing, alpha, backend)


def summed_hausdorff_fields(masks: Sequence[torch.Tensor], spacing: Sequence[float] | None = None,
                            alpha: float = 2.0, backend: str = "auto") -> torch.Tensor:
    """``sum_k hausdorff_distance_field(masks[k])`` for bool ``(B, z, y, x)`` masks of one shape.

    The loss needs the field of the prediction plus that of the target; the native back-end writes
    both into one buffer, one thread per sample, with no intermediate volume.
    """
    spacing_zyx = check_spacing(spacing)
    resolved = resolve_backend(backend, masks[0].device)
    if resolved == "native" and alpha == 2.0:
        return squared_distance_to_other_class(masks, spacing_zyx)
    # one batched transform for all masks (fewer kernel launches on CUDA)
    fields = _field_by_transforms(torch.cat(list(masks)), spacing_zyx, alpha, resolved)
    return fields.view(len(masks), *masks[0].shape).sum(dim=0)


def _field_by_transforms(mask: torch.Tensor, spacing_zyx: tuple[float, float, float], alpha: float,
                         backend: str) -> torch.Tensor:
    """One Hausdorff field from two distance transforms (object and background)."""
    batch = mask.shape[0]
    squared = squared_euclidean_distance_transform(torch.cat([mask, ~mask]), spacing_zyx, backend)
    degenerate = (mask.flatten(1).all(dim=1) | ~mask.flatten(1).any(dim=1)).view(-1, 1, 1, 1)
    field = torch.where(degenerate, torch.zeros((), device=squared.device),
                        squared[:batch] + squared[batch:])
    return field if alpha == 2.0 else field.pow(alpha / 2.0)


class HausdorffDTLoss(SegmentationLoss):
    """Distance-transform approximation of the Hausdorff distance (see module docstring)."""

    supports_batch = False  # a distance field is a property of one sample's geometry

    def __init__(self, alpha: float = 2.0, spacing: Sequence[float] | None = None, reduction: str = "mean",
                 backend: str = "auto"):
        super().__init__(reduction)
        self.alpha = float(alpha)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.backend = backend

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 5:
            raise HiennuError(f"{type(self).__name__}: logits must be (B, 1, z, y, x), got shape "
                             f"{tuple(logits.shape)}")
        probs = torch.sigmoid(logits)
        with torch.no_grad():
            fields = summed_hausdorff_fields([(logits > 0)[:, 0], target[:, 0] > 0.5], self.spacing, self.alpha,
                                             self.backend)
        return spatial_mean((probs - target).square() * fields[:, None])

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, spacing={self.spacing}, reduction={self.reduction!r}"


class LogHausdorffDTLoss(HausdorffDTLoss):
    """``log(HausdorffDT + 1)``, taken after the batch reduction (MONAI's definition)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.log1p(super().forward(logits, target))
