"""Target-grid policies. Every size here is numpy order ``(z, y, x)`` in voxels.

The grid *unit* of an axis is the least common multiple of :data:`PAPER_MULTIPLE` (16, the paper's)
and the network's down-sampling factor on that axis (:func:`grid_unit`).

- paper: per axis the mean size over the training cases, rounded to the nearest multiple of the
  unit, never below it (the design's rule; 144x144x32 on the 37 BONBID dev cases).
- lossless: per axis the largest size over the cases, rounded *up* to a multiple of the unit, so
  the grid is at least as fine as every case and nearest-neighbour round trips are exact.
- memory: the largest grid up to the lossless one whose estimated training step fits the GPU
  memory budget. Starting from the lossless grid, the axis that is largest relative to the
  paper grid shrinks by one unit until the estimate fits (never below the unit).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.planning.memory import GIB, MemoryEstimate, estimate_training_memory
from hiennu.plans import NetworkPlan

PAPER_MULTIPLE = 16


def grid_unit(network: NetworkPlan) -> tuple[int, int, int]:
    """Per axis (z, y, x): lcm(16, the network's down-sampling factor)."""
    return tuple(math.lcm(PAPER_MULTIPLE, int(f)) for f in network.downsampling_factor_zyx)  # type: ignore[return-value]


def paper_grid(sizes_zyx: Sequence[Sequence[int]], unit_zyx: Sequence[int]) -> tuple[int, int, int]:
    """Mean size per axis rounded to the nearest multiple of the unit (halves round up), >= unit."""
    mean = np.asarray(sizes_zyx, float).mean(axis=0)
    out = []
    for m, f in zip(mean, unit_zyx):
        out.append(max(int(f), int(np.floor(m / f + 0.5)) * int(f)))
    return tuple(out)  # type: ignore[return-value]


def lossless_grid(sizes_zyx: Sequence[Sequence[int]], unit_zyx: Sequence[int]) -> tuple[int, int, int]:
    """Largest size per axis rounded up to a multiple of the unit."""
    top = np.asarray(sizes_zyx, int).max(axis=0)
    return tuple(int(-(-int(m) // int(f)) * int(f)) for m, f in zip(top, unit_zyx))  # type: ignore[return-value]


def memory_grid(sizes_zyx: Sequence[Sequence[int]], network: NetworkPlan, batch_size: int,
                gpu_memory_gb: float) -> tuple[tuple[int, int, int], MemoryEstimate]:
    """The largest grid up to the lossless one whose training step fits ``gpu_memory_gb`` (GiB)."""
    unit = grid_unit(network)
    budget = gpu_memory_gb * GIB
    reference = paper_grid(sizes_zyx, unit)
    grid = list(lossless_grid(sizes_zyx, unit))
    while True:
        estimate = estimate_training_memory(network, grid, batch_size)
        if estimate.total_bytes <= budget:
            return tuple(grid), estimate  # type: ignore[return-value]
        shrinkable = [a for a in range(3) if grid[a] > unit[a]]
        if not shrinkable:
            raise HiennuError(
                f"the network does not fit a {gpu_memory_gb:g} GB GPU even on the smallest grid "
                f"{tuple(grid)} (z, y, x) at batch size {batch_size}: estimated {estimate.total_gib:.2f} GiB. "
                f"Give a larger --gpu-memory-gb, or edit the batch size/features in plans.json")
        axis = max(shrinkable, key=lambda a: (grid[a] / reference[a], grid[a]))
        grid[axis] -= unit[axis]
