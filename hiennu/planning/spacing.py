"""Target spacing of the brain-cropped configuration: nnU-Net's rule, with the reason spelled out.

All spacings are mm in numpy order (z, y, x); sizes are voxels (z, y, x).

The target is the median spacing per axis. When the data are strongly anisotropic, as
thick-slice neonatal DWI is, the median out-of-plane spacing would throw away the thin-slice cases'
resolution, so nnU-Net (``ExperimentPlanner.determine_fullres_target_spacing``) takes the 10th
percentile along that axis instead, never finer than the coarsest other axis. "Strongly
anisotropic" means both: the coarsest median spacing is more than :data:`ANISOTROPY_THRESHOLD`
times the finest other one, and that axis has fewer than 1/threshold as many voxels (median brain box) as
the smallest other axis. (nnU-Net v2 compares with the coarsest other spacing, v1 with the finest, as here; with
equal in-plane spacings, as in BONBID, the two agree.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ANISOTROPY_THRESHOLD = 3.0


def plan_target_spacing(spacings_zyx: Sequence[Sequence[float]],
                        box_sizes_zyx: Sequence[Sequence[int]]) -> tuple[list[float], str]:
    """(target spacing (z, y, x) mm, a sentence saying how it was chosen) for the given cases.

    spacings_zyx: each case's native spacing; box_sizes_zyx: each case's brain box in native voxels.
    """
    spacings = np.asarray(spacings_zyx, dtype=float)
    if spacings.ndim != 2 or spacings.shape[1] != 3 or len(spacings) == 0:
        raise ValueError(f"need one (z, y, x) spacing per case, got an array of shape {spacings.shape}")
    target = np.median(spacings, axis=0)
    shape_at_target = np.median(np.asarray(box_sizes_zyx, float) * spacings / target, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * min(target[others])
    aniso_voxels = shape_at_target[worst] * ANISOTROPY_THRESHOLD < min(shape_at_target[others])
    median_text = f"median spacing {_fmt(target)} mm"
    if aniso_spacing and aniso_voxels:
        p10 = float(np.percentile(spacings[:, worst], 10))
        chosen = max(p10, float(max(target[others])))
        target[worst] = chosen
        axis = "zyx"[worst]
        reason = (f"{median_text}; axis {axis} is anisotropic (more than {ANISOTROPY_THRESHOLD:g}x the finest "
                  f"spacing and fewer than 1/{ANISOTROPY_THRESHOLD:g} of its voxels), so its target is the "
                  f"10th percentile of its spacings ({p10:.4g} mm), at least the coarsest other axis "
                  f"(nnU-Net's rule): target {_fmt(target)} mm (z y x)")
    else:
        reason = f"{median_text} (z y x), not strongly anisotropic, taken as the target (nnU-Net's rule)"
    return [float(round(v, 6)) for v in target], reason


def _fmt(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.4g}" for v in values)
