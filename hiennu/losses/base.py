"""What every loss shares: input checks, float32 computation outside autocast, batch reduction.

A loss sees logits ``(B, 1, z, y, x)`` (any float dtype) and a binary target of the same shape
(float, integer or bool with values {0, 1}). It computes one value per sample in float32 (float64 for float64 logits), with
autocast switched off, and reduces over the batch: ``"mean"`` (default), ``"sum"`` or ``"none"``
(the per-sample values, shape ``(B,)``). There is no state across calls or samples, so the losses
behave the same under DistributedDataParallel as on one device (in batch mode, below, each rank sums over
its own share of the batch; nnU-Net gathers the sums across GPUs, hiennu does not).

Batch mode (``loss.batch = True``, nnU-Net's ``batch_dice``, MONAI's ``batch=True``): the whole batch is
one sample, so the sums of a region loss run over every voxel of every sample before the ratio is
taken; ``reduction="none"`` then returns one value, shape ``(1,)`` (a hybrid's per-sample distance term,
shape ``(B,)``, is then added to it by broadcasting; with ``"mean"``, the trainer's, the weights are as
documented). On single 2D slices, most of which
hold no lesion, a per-sample Dice is close to 1 for any predicted voxel on a lesion-free slice and
pushes the network to empty such slices; summing over the batch removes that push. Only losses whose
value is a function of voxel sums or voxel means support it (``supports_batch``); distance-transform
losses are per sample by nature. :func:`use_batch_reduction` switches it on for every supporting
part of a (compound) loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from hiennu.errors import HiennuError

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise HiennuError(f"unknown loss reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    return reduction


def reduce_batch(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-sample values ``(B,)`` as ``reduction`` says."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def prepare_inputs(name: str, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and values; return (logits, target) in float32 (float64 stays float64)."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise HiennuError(f"{name}: logits and target must be torch tensors")
    if logits.dim() < 3 or logits.shape[1] != 1:
        raise HiennuError(f"{name}: logits must be (B, 1, *spatial) with one output channel, got shape "
                          f"{tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise HiennuError(f"{name}: target shape {tuple(target.shape)} differs from logits shape "
                          f"{tuple(logits.shape)}; pass the binary mask as (B, 1, *spatial)")
    if not logits.is_floating_point():
        raise HiennuError(f"{name}: logits must be a floating-point tensor, got {logits.dtype}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    target = target.to(device=logits.device, dtype=dtype)
    if bool(((target != 0) & (target != 1)).any()):
        raise HiennuError(f"{name}: the target must be binary (values 0 and 1); found other values. "
                          f"Threshold or map the label before computing the loss")
    return logits.to(dtype), target


class SegmentationLoss(nn.Module, ABC):
    """Base: subclasses implement :meth:`per_sample` on float32 logits and target."""

    supports_batch = True

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.batch = False

    @abstractmethod
    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each sample, shape ``(B,)``, float32."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = prepare_inputs(type(self).__name__, logits, target)
        if self.batch:
            logits, target = logits.reshape(1, 1, -1), target.reshape(1, 1, -1)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return reduce_batch(self.per_sample(logits, target), self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}" + (", batch=True" if self.batch else "")


def use_batch_reduction(loss: nn.Module) -> list[str]:
    """Switch batch mode on (see the module docstring) for every part of ``loss`` that supports it; returns
    the class names switched. A loss with no such part (a distance-transform loss alone) is an error."""
    switched = []
    for module in loss.modules():
        if isinstance(module, SegmentationLoss) and module.supports_batch:
            module.batch = True
            switched.append(type(module).__name__)
    if not switched:
        raise HiennuError(f"plans: training.batch_dice is true but the loss {type(loss).__name__} has no region term "
                          f"that can sum over the batch (distance-transform losses are per sample); set "
                          f"training.batch_dice to false in the plans")
    return switched


def spatial_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the batch axis: ``(B, ...) -> (B,)``."""
    return x.flatten(1).sum(dim=1)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the batch axis: ``(B, ...) -> (B,)``."""
    return x.flatten(1).mean(dim=1)
