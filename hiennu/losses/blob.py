"""Blob loss (F. Kofler et al., "blob loss: instance imbalance aware loss functions for semantic segmentation",
IPMI 2023): a region loss counted once per reference lesion, so that each lesion weighs the same whatever its size,
beside the usual loss over the whole sample.

Per sample, with p = sigmoid(logits), g the target and y_1 ... y_N its connected components (the "blobs"; full
connectivity over the spatial axes: 26 neighbours in 3D, 8 within a 2D slice):

``BlobDice = (1/N) Σ_n [1 - (2 Σ p_n y_n + s_nr) / (Σ p_n + Σ y_n + s_dr)]``, ``p_n = p · (1 - g + y_n)``,

that is, each blob's soft Dice against the prediction with the *other* blobs' voxels taken out: every predicted
voxel off the lesions (a false-positive speck) counts in each blob's denominator, the other lesions do not. Since
``Σ p_n = Σ_{g=0} p + Σ p y_n``, each blob's term needs three sums only: the probability mass off the lesions, on the
blob, and the blob's size. A sample without a lesion has no blob and scores 0 (its false positives are the global
term's business). s_nr = s_dr = 1e-5 as :class:`~hiennu.losses.dice.DiceLoss`.

``BlobDiceFocal = 2 · DiceFocal + 1 · BlobDice``: the paper's form α · global + β · blob, with α = 2 and β = 1
chosen here before any training and not tuned; DiceFocal as :class:`~hiennu.losses.compound.DiceFocalLoss`. Each
part is reduced over the batch first, as in the other hybrids; under batch mode (``training.batch_dice``) the
DiceFocal part sums over the batch and the blob part stays per sample (a blob belongs to one sample), like the
distance terms.

Why hand-written: MONAI and nnU-Net have no blob loss; the components are labelled on the CPU by
``scipy.ndimage.label`` (the target carries no gradient), the sums are one ``index_add`` per sample on the logits'
device.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from hiennu.losses.base import SegmentationLoss, check_reduction
from hiennu.losses.compound import DiceFocalLoss


def blob_labels(target: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The connected components of each sample of a binary ``target`` ``(B, 1, *spatial)``: labels ``(B, voxels)``
    (int64 on the target's device, 0 off the lesions, 1..N_b on sample b's blobs) and the counts ``[N_b]``."""
    array = target.detach().to("cpu", torch.uint8).numpy().reshape(target.shape[0], *target.shape[2:])
    structure = ndimage.generate_binary_structure(array.ndim - 1, array.ndim - 1)
    labels = np.zeros(array.shape, np.int64)
    counts = []
    for b in range(array.shape[0]):
        labels[b], n = ndimage.label(array[b], structure=structure)
        counts.append(int(n))
    return torch.from_numpy(labels.reshape(array.shape[0], -1)).to(target.device), counts


def blob_dice_per_sample(probs: torch.Tensor, target: torch.Tensor, smooth_nr: float = 1e-5,
                         smooth_dr: float = 1e-5) -> torch.Tensor:
    """The blob term of the module docstring per sample, ``(B,)``; probs and target ``(B, 1, *spatial)``."""
    labels, counts = blob_labels(target)
    flat = probs.reshape(probs.shape[0], -1)
    values = []
    for b, n in enumerate(counts):
        if n == 0:
            values.append(flat[b].sum() * 0.0)   # keeps the graph and the dtype
            continue
        mass = torch.zeros(n + 1, dtype=flat.dtype, device=flat.device).index_add(0, labels[b], flat[b])
        size = torch.bincount(labels[b], minlength=n + 1)[1:].to(flat.dtype)
        on_blob, off_lesions = mass[1:], mass[0]
        dice = (2.0 * on_blob + smooth_nr) / (off_lesions + on_blob + size + smooth_dr)
        values.append((1.0 - dice).mean())
    return torch.stack(values)


class BlobDiceLoss(SegmentationLoss):
    """Soft Dice per reference lesion, the other lesions masked out, averaged over the lesions of each sample (see
    the module docstring); 0 for a sample without a lesion. Per sample by nature: batch mode leaves it alone."""

    supports_batch = False

    def __init__(self, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean"):
        super().__init__(reduction)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return blob_dice_per_sample(torch.sigmoid(logits), target, self.smooth_nr, self.smooth_dr)


class BlobDiceFocalLoss(nn.Module):
    """``global_weight · DiceFocal + blob_weight · BlobDice`` (defaults 2 and 1: α and β of the paper's form), both
    reduced the same way."""

    def __init__(self, global_weight: float = 2.0, blob_weight: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.global_loss = DiceFocalLoss(reduction=self.reduction)
        self.blob = BlobDiceLoss(reduction=self.reduction)
        self.global_weight, self.blob_weight = float(global_weight), float(blob_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.global_weight * self.global_loss(logits, target) + self.blob_weight * self.blob(logits, target)

    def extra_repr(self) -> str:
        return f"global_weight={self.global_weight}, blob_weight={self.blob_weight}, reduction={self.reduction!r}"
