"""Loss functions of the study (tensor code, plus a C distance transform for CPU tensors; formulas in
documentation/losses.md).

Every loss is an ``nn.Module`` built with no required argument and called as
``loss(logits, target)`` with logits ``(B, 1, z, y, x)`` and a binary target of the same shape;
it returns a float32 scalar (``reduction="mean"``), or per-sample values (``"none"``), or the sum.
The distance transform (``distance``, back-ends ``native`` C / torch / Triton / ITK) has a public
API that the Hausdorff losses use like any other caller.

May import: the ground floor only (no file I/O, no training code).
"""

from hiennu.losses.blob import BlobDiceFocalLoss, BlobDiceLoss
from hiennu.losses.compound import DiceFocalHDTLoss, DiceFocalLoss, RegionPlusLogHDTLoss, TverskyHDTLoss
from hiennu.losses.dice import DiceLoss
from hiennu.losses.distance import euclidean_distance_transform, squared_euclidean_distance_transform
from hiennu.losses.focal import FocalLoss
from hiennu.losses.hausdorff import HausdorffDTLoss, LogHausdorffDTLoss, hausdorff_distance_field
from hiennu.losses.tversky import TverskyLoss

LOSSES = {
    "Dice": DiceLoss,
    "Focal": FocalLoss,
    "DiceFocal": DiceFocalLoss,
    "Tversky": TverskyLoss,
    "HausdorffDT": HausdorffDTLoss,
    "LogHausdorffDT": LogHausdorffDTLoss,
    "DiceFocalHDT": DiceFocalHDTLoss,
    "TverskyHDT": TverskyHDTLoss,
    "BlobDice": BlobDiceLoss,
    "BlobDiceFocal": BlobDiceFocalLoss,
}

__all__ = [
    "DiceLoss", "FocalLoss", "DiceFocalLoss", "TverskyLoss", "HausdorffDTLoss", "LogHausdorffDTLoss",
    "DiceFocalHDTLoss", "TverskyHDTLoss", "RegionPlusLogHDTLoss", "BlobDiceLoss", "BlobDiceFocalLoss", "LOSSES",
    "euclidean_distance_transform", "squared_euclidean_distance_transform", "hausdorff_distance_field",
]
