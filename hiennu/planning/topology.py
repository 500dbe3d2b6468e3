"""Patch size, pooling, depth, widths and batch size of the patch configuration, for a CPU or a GPU.

All sizes are voxels in numpy order (z, y, x); spacings are mm (z, y, x).

Pooling (nnU-Net's rule, ``get_pool_and_conv_props``): at each down-sampling step an axis is pooled
by 2 when its current spacing is at most twice the finest current spacing (a coarse axis waits until
the others have caught up) and its feature map still has at least ``2 * MIN_FEATURE_MAP`` voxels. (nnU-Net asks
for less than twice: an axis at exactly twice the finest spacing pools here one step earlier than there; BONBID's
2.0 x 1.375 x 1.375 mm pools alike.)
The patch is a multiple of the resulting down-sampling factor on every axis.

Patch size: start from the median brain box at the target spacing, rounded up to the factor; while
the patch is over the device's budget, shrink by one factor step the axis whose patch is largest
relative to the median box (nnU-Net's reduction order).

- ``cpu``: four stages, widths 16-128, instance norm, batch 2, a patch of at most
  :data:`CPU_PATCH_VOXELS` voxels: on the 37 BONBID dev cases 48 x 88 x 72, which holds the median
  brain box (46 x 84 x 67 at 2 x 1.375 x 1.375 mm) in one window, and whose fp32 training step takes
  about 2 s on two cores, leaving the rest of a 3 s step to the augmentation workers
  (documentation/benchmarks.md).
- ``gpu``: five stages, widths 32-320, instance norm, a patch covering the largest brain box; the
  batch is the largest (2 to 8) whose bf16 training step fits ``gpu_memory_gb``
  (:func:`~hiennu.planning.memory.estimate_training_memory`), capped as in nnU-Net so that one batch
  holds at most 5 % of the dataset's voxels, but never below 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.planning.memory import estimate_training_memory
from hiennu.plans import NetworkPlan

MIN_FEATURE_MAP = 4
CPU_PATCH_VOXELS = 310_000
CPU_FEATURES = (16, 32, 64, 128)
GPU_FEATURES = (32, 64, 128, 256, 320)
CPU_BATCH = 2
GPU_BATCH_RANGE = (2, 8)
BATCH_DATASET_FRACTION = 0.05
PLAN_FOR = ("cpu", "gpu")


@dataclass
class PatchPlan:
    """The planned patch, network and batch, with the reason for each choice."""

    patch_size_zyx: list[int]
    network: NetworkPlan
    batch_size: int
    reason: str


def stage_dropout(num_stages: int) -> list[float]:
    """The paper's dropout rising with depth: 0.1, 0.1, then evenly up to 0.3 (4 stages: 0.1 0.1 0.2 0.3)."""
    if num_stages <= 2:
        return [0.1] * num_stages
    return [0.1, 0.1] + [round(float(v), 3) for v in np.linspace(0.2, 0.3, num_stages - 2)]


def pool_kernels(patch_zyx: Sequence[int], spacing_zyx: Sequence[float], max_steps: int) -> list[list[int]]:
    """Pooling kernels (one (z, y, x) kernel per down-sampling step) by nnU-Net's rule; at most ``max_steps``."""
    size = [float(v) for v in patch_zyx]
    spacing = [float(v) for v in spacing_zyx]
    kernels: list[list[int]] = []
    for _ in range(max_steps):
        finest = min(spacing)
        kernel = [2 if (spacing[a] <= 2 * finest and size[a] >= 2 * MIN_FEATURE_MAP) else 1 for a in range(3)]
        if kernel == [1, 1, 1]:
            break
        kernels.append(kernel)
        size = [s / k for s, k in zip(size, kernel)]
        spacing = [s * k for s, k in zip(spacing, kernel)]
    return kernels


def _factor(kernels: list[list[int]]) -> list[int]:
    return [math.prod(k[a] for k in kernels) for a in range(3)]


def _round_up(values: Sequence[float], factor: Sequence[int]) -> list[int]:
    return [max(f, int(math.ceil(v / f)) * f) for v, f in zip(values, factor)]


def _network(in_channels: int, features: Sequence[int], kernels: list[list[int]]) -> NetworkPlan:
    feats = list(features[:len(kernels) + 1])
    return NetworkPlan(in_channels=in_channels, features_per_stage=feats, pool_kernel_sizes=kernels,
                       dropout_per_stage=stage_dropout(len(feats)), norm="instance")


def _fit_patch(start_zyx: Sequence[float], spacing_zyx: Sequence[float], max_steps: int,
               voxel_budget: float) -> tuple[list[int], list[list[int]]]:
    """Shrink ``start_zyx`` until the rounded patch fits ``voxel_budget``; returns (patch, kernels)."""
    reference = [max(1.0, float(v)) for v in start_zyx]
    target = list(reference)
    while True:
        kernels = pool_kernels(target, spacing_zyx, max_steps)
        factor = _factor(kernels)
        patch = _round_up(target, factor)
        if math.prod(patch) <= voxel_budget:
            return patch, kernels
        ratios = [p / r if p > f else 0.0 for p, r, f in zip(patch, reference, factor)]
        axis = int(np.argmax(ratios))
        if ratios[axis] == 0.0:  # every axis is down to one factor step
            return patch, kernels
        target[axis] = patch[axis] - factor[axis]


def _gpu_batch(network: NetworkPlan, patch: list[int], batch_range: tuple[int, int], dataset_voxels: float,
               gpu_memory_gb: float):
    """The largest batch in ``batch_range`` whose bf16 step fits ``gpu_memory_gb`` (GiB), capped so that one batch
    holds at most :data:`BATCH_DATASET_FRACTION` of the dataset's voxels but never below the range's low end;
    returns (batch, its memory estimate). Raises HiennuError when even the smallest batch does not fit."""
    low, high = batch_range
    cap = max(low, int(BATCH_DATASET_FRACTION * dataset_voxels / math.prod(patch)))
    batch = low
    for b in range(low, min(high, cap) + 1):
        if estimate_training_memory(network, patch, b).total_gib <= gpu_memory_gb:
            batch = b
    estimate = estimate_training_memory(network, patch, batch)
    if estimate.total_gib > gpu_memory_gb:
        raise HiennuError(f"--gpu-memory-gb {gpu_memory_gb:g}: the GPU patch {patch} (z y x) at batch {batch} "
                          f"needs an estimated {estimate.total_gib:.2f} GiB; give more memory or plan for the "
                          f"CPU (--plan-for cpu), or edit the patch in plans.json")
    return batch, estimate


def plan_patch(median_box_zyx: Sequence[float], max_box_zyx: Sequence[float], spacing_zyx: Sequence[float],
               in_channels: int, plan_for: str, gpu_memory_gb: float, dataset_voxels: float) -> PatchPlan:
    """Plan the patch configuration's patch, network and batch for ``plan_for`` (``cpu`` or ``gpu``).

    median_box_zyx / max_box_zyx: the median and largest brain box at the target spacing (voxels);
    dataset_voxels: total voxels of every case's box at the target spacing (for the batch cap).
    """
    if plan_for not in PLAN_FOR:
        raise HiennuError(f"--plan-for must be one of {', '.join(PLAN_FOR)}, got {plan_for!r}")
    if plan_for == "cpu":
        patch, kernels = _fit_patch(median_box_zyx, spacing_zyx, len(CPU_FEATURES) - 1, CPU_PATCH_VOXELS)
        network = _network(in_channels, CPU_FEATURES, kernels)
        box = [round(float(v)) for v in median_box_zyx]
        covers = all(p >= b for p, b in zip(patch, box))
        fit = (f"covers the median brain box {box}" if covers else
               f"does not cover the median brain box {box} (which holds {math.prod(box) / math.prod(patch):.1f} "
               f"patches of voxels: training sees parts of a brain, prediction slides several windows over it)")
        reason = (f"planned for a CPU: patch {patch} (z y x), at most {CPU_PATCH_VOXELS} voxels, {fit} "
                  f"(about 3 s per fp32 step at batch {CPU_BATCH} on 2 cores for BONBID's patch), widths "
                  f"{network.features_per_stage}, instance norm, pooling {kernels} by nnU-Net's spacing rule")
        return PatchPlan(patch, network, CPU_BATCH, reason)
    patch, kernels = _fit_patch(max_box_zyx, spacing_zyx, len(GPU_FEATURES) - 1, math.inf)
    network = _network(in_channels, GPU_FEATURES, kernels)
    batch, estimate = _gpu_batch(network, patch, GPU_BATCH_RANGE, dataset_voxels, gpu_memory_gb)
    reason = (f"planned for a GPU with {gpu_memory_gb:g} GiB: patch {patch} (z y x) covers the largest brain box "
              f"{[round(float(v)) for v in max_box_zyx]}, widths {network.features_per_stage}, instance norm, "
              f"pooling {kernels} by nnU-Net's spacing rule, batch {batch} (estimated {estimate.total_gib:.2f} GiB "
              f"in bf16; at most {BATCH_DATASET_FRACTION:.0%} of the dataset's voxels per batch, at least 2)")
    return PatchPlan(patch, network, batch, reason)


# nnU-Net's 2d: deeper than the 3D CPU network, a batch of many slices. CPU: widths 12-192 over five stages,
# as many slices as fit CPU_SLICE_BATCH_VOXELS. Narrower than nnU-Net's habit because each 2D level costs as
# much per voxel as the one above it: widths 16-256 cost 276 k FLOPs a voxel (forward + backward), close to
# the 3D CPU network's 323 k; 12-192 cost 156 k, a float32 step of 2.05x the voxels per second of 3d_fullres
# (documentation/benchmarks.md), and trained better by 5-fold CV on the 37 BONBID dev cases (Dice 0.518
# against 0.476 for 16-256, paired Wilcoxon Holm p 0.044 on Dice, MASD and NSD; documentation/results.md,
# session 26, recipe 13).
# GPU: nnU-Net's 2d widths, batch by the memory estimate.
CPU_SLICE_FEATURES = (12, 24, 48, 96, 192)
GPU_SLICE_FEATURES = (32, 64, 128, 256, 512, 512)
CPU_SLICE_BATCH_VOXELS = 160_000  # 20 slices of 96 x 80 on BONBID: 0.29 s a float32 step on 2 cores
SLICE_BATCH_RANGE = (2, 64)


def plan_slice_patch(max_box_zyx: Sequence[float], spacing_zyx: Sequence[float], in_channels: int, plan_for: str,
                     gpu_memory_gb: float, dataset_voxels: float) -> PatchPlan:
    """Plan the ``2d`` configuration: a one-slice patch ``[1, y, x]`` covering the largest brain box in-plane
    (so one window per slice predicts a case), in-plane pooling by nnU-Net's rule, a 2D network and a batch
    sized for ``plan_for``.

    max_box_zyx: the largest brain box at the target spacing (voxels; z is ignored); spacing_zyx: the
    target spacing (mm; only y and x matter); dataset_voxels: the total voxels of every case's box (the
    GPU batch cap, as in :func:`plan_patch`). Slabs of k slices (an edited ``[k, y, x]`` in the plans) train
    too, but the planner writes single slices, as nnU-Net.
    """
    if plan_for not in PLAN_FOR:
        raise HiennuError(f"--plan-for must be one of {', '.join(PLAN_FOR)}, got {plan_for!r}")
    features = CPU_SLICE_FEATURES if plan_for == "cpu" else GPU_SLICE_FEATURES
    in_plane = [1.0, float(max_box_zyx[1]), float(max_box_zyx[2])]
    flat_spacing = [math.inf, float(spacing_zyx[1]), float(spacing_zyx[2])]  # z never pools
    kernels = pool_kernels(in_plane, flat_spacing, len(features) - 1)
    patch = _round_up(in_plane, _factor(kernels))
    patch[0] = 1
    network = _network(in_channels, features, kernels)
    network.spatial_dims = 2
    slice_voxels = math.prod(patch)
    if plan_for == "cpu":
        batch = int(min(max(CPU_SLICE_BATCH_VOXELS // slice_voxels, SLICE_BATCH_RANGE[0]), SLICE_BATCH_RANGE[1]))
        reason = (f"planned for a CPU: patch {patch} (z y x), one slice, covers the largest brain box in-plane "
                  f"{[round(float(v)) for v in max_box_zyx[1:]]}, a 2D network of widths "
                  f"{network.features_per_stage}, instance norm, in-plane pooling {kernels} (nnU-Net's rule), "
                  f"batch {batch} ({batch * slice_voxels} voxels a step; the CPU target is about "
                  f"{CPU_SLICE_BATCH_VOXELS}, and a batch holds {SLICE_BATCH_RANGE[0]} slices at least)")
        return PatchPlan(patch, network, batch, reason)
    batch, estimate = _gpu_batch(network, patch, SLICE_BATCH_RANGE, dataset_voxels, gpu_memory_gb)
    reason = (f"planned for a GPU with {gpu_memory_gb:g} GiB: patch {patch} (z y x), one slice, covers the largest "
              f"brain box in-plane, a 2D network of widths {network.features_per_stage}, instance norm, in-plane "
              f"pooling {kernels}, batch {batch} (estimated {estimate.total_gib:.2f} GiB; at most "
              f"{BATCH_DATASET_FRACTION:.0%} of the dataset's voxels per batch)")
    return PatchPlan(patch, network, batch, reason)
