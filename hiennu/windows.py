"""Where the sliding windows of a patch configuration go, and when one window over the whole case is cheaper.

Ground floor (imports nothing of hiennu): the plans' :meth:`~hiennu.plans.Configuration.inference_window_zyx`
decides a case's window with these, :mod:`hiennu.inference.sliding_window` places and weights the windows.
Sizes are voxels in ``(z, y, x)`` order.

- :func:`window_starts`: nnU-Net's windows along one axis, overlapping by half and covering it exactly.
- :func:`window_count`: how many such windows a case takes.
- :func:`case_window`: one window that holds the whole case (each axis rounded up to the network's
  down-sampling factor, never smaller than the patch), when it has fewer voxels than the patch windows
  together and at most ``max_patch_voxels`` patches' worth. A case that overhangs the patch by a few
  voxels otherwise costs two windows per overhanging axis (up to eight for three axes); the network is
  fully convolutional, so it can see the case whole. Written here because neither nnU-Net nor MONAI sizes
  the window by the case: both always slide the training patch.
"""

from __future__ import annotations

import math
from typing import Sequence

STEP_FRACTION = 0.5
# A case window is at most this many patches' voxels: inference memory grows with the window, and the
# planner sized the patch (with a training batch and its gradients) for the machine's memory.
CASE_WINDOW_MAX_PATCHES = 2.0


def window_starts(size: int, patch: int, step_fraction: float = STEP_FRACTION) -> list[int]:
    """Start indices along one axis of ``size`` voxels for windows of ``patch`` (``size >= patch``).

    The number of windows is ``ceil((size - patch) / max(1, patch * step_fraction)) + 1`` (a step is
    at least one voxel, so one-voxel windows are not visited twice); the starts run evenly from 0 to
    ``size - patch`` (rounded), so the windows cover every voxel.
    """
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch}); pad it first")
    steps = int(math.ceil((size - patch) / max(1.0, patch * step_fraction))) + 1
    if steps == 1:
        return [0]
    stride = (size - patch) / (steps - 1)
    return [int(round(stride * i)) for i in range(steps)]


def window_count(shape_zyx: Sequence[int], window_zyx: Sequence[int]) -> int:
    """Windows of ``window_zyx`` that cover a case of ``shape_zyx`` (an axis shorter than the window is padded
    to it: one window along it)."""
    count = 1
    for size, patch in zip(shape_zyx, window_zyx):
        count *= len(window_starts(max(int(size), int(patch)), int(patch)))
    return count


def case_window(shape_zyx: Sequence[int], window_zyx: Sequence[int], multiple_zyx: Sequence[int],
                max_patch_voxels: float = CASE_WINDOW_MAX_PATCHES) -> tuple[int, int, int]:
    """The window for a case of ``shape_zyx``: one window over all of it, or ``window_zyx`` (the patch windows).

    The case window is, per axis, the larger of the patch and the case's size rounded up to
    ``multiple_zyx`` (the network's down-sampling factor, so that every pooling divides it). It is taken
    when it has fewer voxels than the patch windows that would cover the case (:func:`window_count` times the
    patch) and at most ``max_patch_voxels`` times the patch's voxels; otherwise the patch. A case that fits
    the patch gets the patch (the same single window either way).
    """
    window = tuple(int(w) for w in window_zyx)
    fitted = tuple(max(w, -(-int(n) // int(m)) * int(m)) for n, w, m in zip(shape_zyx, window, multiple_zyx))
    if fitted == window:
        return window  # type: ignore[return-value]
    patch_voxels = math.prod(window)
    fitted_voxels = math.prod(fitted)
    cheaper = fitted_voxels < window_count(shape_zyx, window) * patch_voxels
    if cheaper and fitted_voxels <= max_patch_voxels * patch_voxels:
        return fitted  # type: ignore[return-value]
    return window  # type: ignore[return-value]
