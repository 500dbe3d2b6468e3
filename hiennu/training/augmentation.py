"""The CPU augmentation pipeline: batchgenerators transforms with the plans' parameters.

This is the reference implementation (``hiennu.training.gpu_augmentation`` mirrors it in torch).
:func:`build_transforms` maps :class:`~hiennu.plans.AugmentationPlan` onto
batchgenerators (see ``documentation/augmentation.md`` for the table); :func:`augment_sample`
runs it on one sample with numpy's and Python's global generators seeded from the sample's own
seed, so the result depends on nothing but (sample, seed): not on the worker that computes it,
the number of workers, or the rank.

Arrays: data (C, z, y, x) float32, seg (1, z, y, x); batchgenerators sees (1, C, z, y, x). A
pipeline built for a 2D grid (y, x) (the ``2d`` configuration's samples) runs on the slices folded into
the channels: batchgenerators sees (1, C * z, y, x) and a seg of z channels, so the elastic field, blur
and low resolution stay in-plane and every slice of a sample (a 2.5D network's context slices too) gets
the same deformation and mirroring.
"""

from __future__ import annotations

import math
import random

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import GammaTransform
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import SpatialTransform

from hiennu.plans import AugmentationPlan


class AxisFlipTransform(AbstractTransform):
    """Flip each of ``axes`` (spatial numpy axes, 0 = z) with probability ``p_per_axis``, per sample.

    batchgenerators' MirrorTransform flips with a fixed 1/2 per axis once a sample is chosen;
    the plans give the per-axis probability directly, hence this small transform.
    """

    def __init__(self, axes: tuple[int, ...], p_per_axis: float, data_key: str = "data", label_key: str = "seg"):
        self.axes = tuple(axes)
        self.p_per_axis = p_per_axis
        self.data_key = data_key
        self.label_key = label_key

    def __call__(self, **data_dict):
        data = data_dict[self.data_key]
        seg = data_dict.get(self.label_key)
        for b in range(len(data)):
            for axis in self.axes:
                if np.random.uniform() < self.p_per_axis:
                    data[b] = np.flip(data[b], axis=1 + axis)
                    if seg is not None:
                        seg[b] = np.flip(seg[b], axis=1 + axis)
        return data_dict


class SliceTransforms(Compose):
    """A pipeline on 2D slices: :func:`augment_sample` folds the z axis into the channels before it and
    unfolds it after."""


class KeepChannels(AbstractTransform):
    """Put ``channels`` of the data aside (before the intensity transforms), for :class:`RestoreChannels`.

    The pair makes :attr:`AugmentationPlan.intensity_skip_channels` work without touching batchgenerators'
    transforms: they still draw their random numbers for every channel, so the other channels are
    augmented exactly as without the pair; only the kept channels' values are put back afterwards.
    """

    key = "hiennu_kept_channels"

    def __init__(self, channels: tuple[int, ...]):
        self.channels = list(channels)

    def __call__(self, **data_dict):
        data_dict[self.key] = np.array(data_dict["data"][:, folded_channels(self.channels, data_dict)], copy=True)
        return data_dict


SLICES_KEY = "hiennu_slices_per_channel"


def folded_channels(channels: list[int], data_dict: dict) -> list[int]:
    """The array channels of input ``channels`` when :func:`augment_sample` folded each channel's slices into
    the channels (channel-major, ``data_dict[SLICES_KEY]`` slices each); ``channels`` itself otherwise."""
    depth = int(data_dict.get(SLICES_KEY, 1))
    return [c * depth + j for c in channels for j in range(depth)]


class RestoreChannels(AbstractTransform):
    """Write back the channels :class:`KeepChannels` put aside (after the intensity transforms)."""

    def __init__(self, channels: tuple[int, ...]):
        self.channels = list(channels)

    def __call__(self, **data_dict):
        data_dict["data"][:, folded_channels(self.channels, data_dict)] = data_dict.pop(KeepChannels.key)
        return data_dict


def build_transforms(plan: AugmentationPlan, grid_zyx: tuple[int, ...]) -> Compose:
    """The batchgenerators pipeline for ``plan`` on a fixed grid (z, y, x), in the GPU path's order.

    Elastic deformation, in-plane rotation and scaling (one SpatialTransform, no cropping), Gaussian noise,
    Gaussian blur, simulated low resolution, gamma, mirroring. A probability of 0 leaves a
    transform out (rotation and scaling are then not even drawn, so the random numbers the other
    transforms draw are those of a pipeline without them). On a 3D grid the rotation is batchgenerators'
    ``angle_x`` (the y-x plane); its ``angle_y`` and ``angle_z`` stay 0. ``plan.intensity_skip_channels``
    are put aside after the elastic deformation and back before mirroring (:class:`KeepChannels`). A grid
    of two sizes (y, x) builds the 2D pipeline (:class:`SliceTransforms`): mirroring then keeps the plan's
    in-plane axes (1 = y, 2 = x) and drops z.
    """
    if len(grid_zyx) not in (2, 3):
        raise ValueError(f"augmentation grid must be (z, y, x) or (y, x), got {tuple(grid_zyx)}")
    dims = len(grid_zyx)
    transforms: list[AbstractTransform] = []
    if plan.p_elastic > 0 or plan.p_rotation > 0 or plan.p_scale > 0:
        angle = tuple(math.radians(a) for a in plan.rotation_degrees)
        transforms.append(SpatialTransform(
            patch_size=tuple(int(n) for n in grid_zyx), patch_center_dist_from_border=None,
            do_elastic_deform=plan.p_elastic > 0, alpha=tuple(plan.elastic_alpha), sigma=tuple(plan.elastic_sigma),
            do_rotation=plan.p_rotation > 0, angle_x=angle, angle_y=(0.0, 0.0), angle_z=(0.0, 0.0),
            do_scale=plan.p_scale > 0, scale=tuple(plan.scale_range), random_crop=False,
            border_mode_data="nearest", order_data=1, border_mode_seg="constant", border_cval_seg=0,
            order_seg=0, p_el_per_sample=plan.p_elastic, p_rot_per_sample=plan.p_rotation,
            p_scale_per_sample=plan.p_scale))
    skip = tuple(int(c) for c in plan.intensity_skip_channels)
    if skip:
        transforms.append(KeepChannels(skip))
    if plan.p_noise > 0:
        # batchgenerators passes "noise_variance" to np.random.normal as the standard deviation
        transforms.append(GaussianNoiseTransform(noise_variance=(plan.noise_std, plan.noise_std),
                                                 p_per_sample=plan.p_noise))
    if plan.p_blur > 0:
        transforms.append(GaussianBlurTransform(blur_sigma=tuple(plan.blur_sigma), different_sigma_per_channel=True,
                                                different_sigma_per_axis=False, p_per_channel=1,
                                                p_per_sample=plan.p_blur))
    if plan.p_lowres > 0:
        zoom = (1.0 / plan.lowres_factor[1], 1.0 / plan.lowres_factor[0])
        transforms.append(SimulateLowResolutionTransform(zoom_range=(zoom,) * dims, per_channel=False,
                                                         p_per_channel=1, order_downsample=1, order_upsample=0,
                                                         p_per_sample=plan.p_lowres))
    if plan.p_gamma > 0:
        gamma_range = (math.exp(plan.log_gamma[0]), math.exp(plan.log_gamma[1]))
        transforms.append(GammaTransform(gamma_range=gamma_range, invert_image=False, per_channel=True,
                                         retain_stats=True, p_per_sample=plan.p_gamma))
    if skip:
        transforms.append(RestoreChannels(skip))
    axes = tuple(plan.mirror_axes) if dims == 3 else tuple(a - 1 for a in plan.mirror_axes if a > 0)
    if plan.p_mirror > 0 and axes:
        transforms.append(AxisFlipTransform(axes, plan.p_mirror))
    return Compose(transforms) if dims == 3 else SliceTransforms(transforms)


def augment_sample(transform: AbstractTransform, data: np.ndarray, seg: np.ndarray,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Augment one sample, data (C, z, y, x) and seg (1, z, y, x), reproducibly from ``seed``.

    Returns float32 data (C, z, y, x) and float32 target (1, z, y, x) in {0, 1}. The inputs are
    not modified.
    """
    np.random.seed(seed % 2**32)
    random.seed(seed)
    shape = np.shape(data)
    data = np.array(data, dtype=np.float32)[None]
    seg = np.array(seg, dtype=np.float32)[None]
    extra = {}
    if isinstance(transform, SliceTransforms):  # in-plane: each channel's slices become channels
        channels, depth, height, width = shape
        data, seg = data.reshape(1, channels * depth, height, width), seg.reshape(1, depth, height, width)
        extra = {SLICES_KEY: depth}
    out = transform(data=data, seg=seg, **extra)
    data, seg = out["data"][0], out["seg"][0]
    if extra:
        data, seg = data.reshape(shape), seg.reshape(1, *shape[1:])
    return np.ascontiguousarray(data, dtype=np.float32), np.ascontiguousarray(seg, dtype=np.float32)
