"""Per-case segmentation metrics of the BONBID-HIE challenge, plus HD95, volumes and lesion detection.

All metrics are computed on the native grid with the image's spacing in mm; arrays are numpy
order ``(z, y, x)`` and spacing is ``spacing_zyx`` (mm, same order as the array axes).

Dice and the lesion volume bands are the package's one definitions in :mod:`hiennu.masks`.

Empty-mask rules (the challenge's): both masks empty -> Dice 1, MASD 0, NSD 1, HD95 0; exactly one
empty -> Dice 0, MASD NaN, NSD 0, HD95 NaN (NaN values are left out of means).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hiennu.evaluation.surface import (average_surface_distances, bounding_box, robust_hausdorff,
                                       surface_dice, surface_distances)
from hiennu.masks import FULL_CONNECTIVITY, dice, volume_band

NSD_TOLERANCE_MM = 2.0
HD_PERCENT = 95.0

# the metrics summarized over cases (scalar per case; NaN = undefined for that case)
SUMMARY_METRICS = ("dice", "masd", "nsd", "hd95", "abs_volume_diff_ml", "lesion_recall", "lesion_precision")

CHALLENGE_2023_NOTE = ("challenge_2023: surface metrics (MASD, NSD, HD95) reproduce the 2023 official scorer, "
                       "which passed the spacing in (x, y, z) order to arrays in (z, y, x) order; they are not "
                       "physically correct on anisotropic grids")


def lesion_detection(ref: np.ndarray, pred: np.ndarray) -> dict:
    """Lesion-wise detection with 26-connected components.

    A reference lesion is detected if it overlaps the prediction; a predicted lesion is a true
    detection if it overlaps the reference. Recall (precision) is NaN when the reference
    (prediction) has no lesion.
    """
    box = bounding_box(ref | pred)
    counts = {"ref_lesions": 0, "pred_lesions": 0, "detected_ref_lesions": 0, "true_pred_lesions": 0}
    if box is not None:
        ref, pred = ref[box], pred[box]
        ref_labels, n_ref = ndimage.label(ref, structure=FULL_CONNECTIVITY)
        pred_labels, n_pred = ndimage.label(pred, structure=FULL_CONNECTIVITY)
        counts.update(ref_lesions=int(n_ref), pred_lesions=int(n_pred),
                      detected_ref_lesions=int(np.count_nonzero(np.unique(ref_labels[pred]))),
                      true_pred_lesions=int(np.count_nonzero(np.unique(pred_labels[ref]))))
    recall = counts["detected_ref_lesions"] / counts["ref_lesions"] if counts["ref_lesions"] else float("nan")
    precision = counts["true_pred_lesions"] / counts["pred_lesions"] if counts["pred_lesions"] else float("nan")
    return {"lesion_recall": recall, "lesion_precision": precision, **counts}


def case_metrics(ref: np.ndarray, pred: np.ndarray, spacing_zyx, brain_voxels: int | None = None,
                 challenge_2023: bool = False) -> dict:
    """All metrics of one case.

    ref, pred: masks ``(z, y, x)`` (bool, or any array where non-zero is lesion) on the same grid;
    spacing_zyx: voxel spacing in mm in array order; brain_voxels: voxels of the brain (non-zero
    ADC), which sets the lesion fraction and volume band (None: both unknown, reported NaN/None);
    challenge_2023: compute the surface metrics with the spacing reversed, as the 2023 official
    scorer did.

    Returns a flat dict of scalars: ``dice``, ``masd`` (mm), ``nsd`` (at 2 mm), ``hd95`` (mm),
    ``asd_ref_to_pred`` / ``asd_pred_to_ref`` (mm), ``ref_volume_ml``, ``pred_volume_ml``,
    ``abs_volume_diff_ml``, the lesion-detection counts and rates, ``lesion_fraction``, ``band``
    and ``challenge_2023``.
    """
    ref = np.asarray(ref) != 0
    pred = np.asarray(pred) != 0
    if ref.shape != pred.shape or ref.ndim != 3:
        raise ValueError(f"reference and prediction must be 3D arrays of one shape, got {ref.shape} and {pred.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_zyx must be three positive numbers in mm, got {spacing_zyx}")
    surface_spacing = tuple(reversed(spacing)) if challenge_2023 else spacing

    ref_voxels, pred_voxels = int(ref.sum()), int(pred.sum())
    result: dict = {"dice": dice(ref, pred)}
    if ref_voxels == 0 and pred_voxels == 0:
        result.update(masd=0.0, nsd=1.0, hd95=0.0, asd_ref_to_pred=0.0, asd_pred_to_ref=0.0)
    elif ref_voxels == 0 or pred_voxels == 0:
        nan = float("nan")
        result.update(masd=nan, nsd=0.0, hd95=nan, asd_ref_to_pred=nan, asd_pred_to_ref=nan)
    else:
        sd = surface_distances(ref, pred, surface_spacing)
        to_pred, to_ref = average_surface_distances(sd)
        result.update(masd=(to_pred + to_ref) / 2.0, nsd=surface_dice(sd, NSD_TOLERANCE_MM),
                      hd95=robust_hausdorff(sd, HD_PERCENT), asd_ref_to_pred=to_pred, asd_pred_to_ref=to_ref)

    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    result.update(ref_volume_ml=ref_voxels * voxel_ml, pred_volume_ml=pred_voxels * voxel_ml,
                  abs_volume_diff_ml=abs(ref_voxels - pred_voxels) * voxel_ml,
                  ref_voxels=ref_voxels, pred_voxels=pred_voxels)
    result.update(lesion_detection(ref, pred))
    if brain_voxels is not None and brain_voxels > 0:
        fraction = ref_voxels / float(brain_voxels)
        result.update(brain_voxels=int(brain_voxels), lesion_fraction=fraction, band=volume_band(fraction))
    else:
        result.update(brain_voxels=None, lesion_fraction=float("nan"), band=None)
    result["challenge_2023"] = bool(challenge_2023)
    return result
