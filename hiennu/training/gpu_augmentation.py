"""The paper's augmentations in torch, batched on the device (the CUDA path of the data pipeline).

:class:`GPUAugmenter` applies, in this order and each with its own per-sample probability from
:class:`~hiennu.plans.AugmentationPlan`, the same transforms as the batchgenerators
reference in :mod:`hiennu.training.augmentation`, with the same parameters and distributions:

1. elastic deformation: uniform(-1, 1) noise per axis, Gaussian-smoothed (sigma uniform in
   ``elastic_sigma`` voxels, zero padding, truncated at 4 sigma like ``scipy.ndimage.gaussian_filter``),
   scaled by alpha uniform in ``elastic_alpha``; then, as batchgenerators composes them, in-plane
   rotation (angle uniform in ``rotation_degrees``) and scaling (one factor for all axes, below 1 or
   above 1 with probability 1/2 each) of the displaced coordinates about the centre of the grid; images
   sampled trilinearly with border replication, the target with nearest neighbour and zeros outside;
2. additive Gaussian noise, mean 0, std ``noise_std``;
3. Gaussian blur, one sigma per channel uniform in ``blur_sigma`` (voxels), separable kernel
   truncated at 4 sigma, half-sample symmetric borders (scipy's ``reflect``);
4. simulated low resolution: per axis a zoom uniform in (1/max factor, 1/min factor), down-sampled
   trilinearly (``align_corners=False``, as scikit-image's ``resize(order=1)``), up-sampled by
   nearest neighbour (``nearest-exact``, as ``resize(order=0)``);
5. gamma per channel on the min-max rescaled intensities, gamma uniform in (exp(lo), 1) or
   (1, exp(hi)) with probability 1/2 each, mean and std of the channel restored afterwards;
6. mirroring: each axis in ``mirror_axes`` flipped with probability ``p_mirror``.

Without rotation and scaling (probability 0, the paper's plans) step 1 draws exactly the random numbers it
drew before they existed, so a seeded batch of such plans is unchanged.

``intensity_skip_channels`` are put aside after step 1 and written back after step 5, as in the CPU
pipeline (steps 2-5 still draw their random numbers for every channel).

Tensors are (B, C, z, y, x) float32 (image) and (B, 1, z, y, x) float32 {0, 1} (target); every
random number comes from the ``torch.Generator`` passed in (on the tensors' device), so a seeded
generator replays a batch exactly. The functions below with explicit parameters are the building
blocks; they are also what the tests compare against scipy, scikit-image and batchgenerators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from hiennu.plans import AugmentationPlan

_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: kernel radius int(4 * sigma + 0.5)
_GAMMA_EPS = 1e-7  # batchgenerators' augment_gamma epsilon


def gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """1D Gaussian kernels (N, 2*radius+1) for sigmas (N,) in voxels, as scipy builds them.

    Each kernel has scipy's own radius ``int(4*sigma + 0.5)`` (taps beyond it are 0), is
    normalized to sum 1, and is a unit impulse where sigma is ~0 (scipy then skips the axis).
    """
    x = torch.arange(-radius, radius + 1, device=sigmas.device, dtype=torch.float64)
    s = sigmas.to(torch.float64).clamp_min(1e-12)[:, None]
    own_radius = (_TRUNCATE * s + 0.5).floor()
    k = torch.exp(-0.5 * (x[None] / s) ** 2) * (x[None].abs() <= own_radius)
    k = k / k.sum(dim=1, keepdim=True)
    impulse = (x == 0).to(torch.float64).expand_as(k)
    k = torch.where((sigmas <= 1e-15)[:, None], impulse, k)
    return k.to(torch.float32)


def _separable_filter(x: torch.Tensor, kernels: torch.Tensor, padding_mode: str,
                      axes: tuple[int, ...] = (0, 1, 2)) -> torch.Tensor:
    """Filter each channel of x (N, z, y, x) with its own 1D kernel (N, K) along ``axes`` (0 = z, 1 = y, 2 = x).

    padding_mode ``zeros`` (scipy ``constant``, cval 0) or ``symmetric`` (scipy ``reflect``).
    Kernels longer than an axis are cut to the taps that can reach real voxels (exact for zeros).
    """
    n = x.shape[0]
    radius = (kernels.shape[1] - 1) // 2
    out = x[None]  # (1, N, z, y, x): one group per channel
    for axis in axes:
        length = out.shape[2 + axis]
        r = min(radius, length - 1) if padding_mode == "zeros" else radius
        k = kernels[:, radius - r: radius + r + 1]
        shape = [n, 1, 1, 1, 1]
        shape[2 + axis] = 2 * r + 1
        weight = k.reshape(shape).to(out.dtype)
        if padding_mode == "zeros":
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
            out = F.conv3d(F.pad(out, pad), weight, groups=n)
        else:
            out = F.conv3d(_symmetric_pad(out, 2 + axis, r), weight, groups=n)
    return out[0]


def _symmetric_pad(x: torch.Tensor, dim: int, r: int) -> torch.Tensor:
    """Pad ``dim`` by r on each side mirroring about the edge, edge included (d c b a | a b c d)."""
    if r == 0:
        return x
    length = x.shape[dim]
    if r > length:  # scipy's reflect repeats the mirrored signal; blur radii here stay far below
        reps = math.ceil(r / length) * 2 + 1
        tiles = [x.flip(dim) if i % 2 == 0 else x for i in range(reps)]
        big = torch.cat(tiles, dim=dim)
        start = (reps // 2) * length - r
        return big.narrow(dim, start, length + 2 * r)
    left = x.narrow(dim, 0, r).flip(dim)
    right = x.narrow(dim, length - r, r).flip(dim)
    return torch.cat([left, x, right], dim=dim)


def gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur every channel of x (B, C, z, y, x) with its own isotropic sigma (B, C), in voxels.

    Matches ``scipy.ndimage.gaussian_filter(x[b, c], sigma, mode="reflect")``.
    """
    b, c = x.shape[:2]
    radius = int(_TRUNCATE * float(sigmas.max()) + 0.5) if sigmas.numel() else 0
    kernels = gaussian_kernels(sigmas.reshape(-1), radius)
    return _separable_filter(x.reshape(b * c, *x.shape[2:]), kernels, "symmetric").reshape(x.shape)


def smooth_displacement(uniform_noise: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Elastic displacement in voxels (B, 3, z, y, x) from noise uniform in [-1, 1] (B, 3, z, y, x).

    Each sample's three components are Gaussian-smoothed with its sigma (B,) (zero padding) and
    scaled by its alpha (B,): batchgenerators' ``elastic_deform_coordinates``. Samples of one slice (z = 1, a
    ``2d`` configuration's) are deformed in-plane as batchgenerators deforms a 2D grid: smoothed along y and x
    only (smoothing along an axis of length 1 would keep only the kernel's centre tap, about 1/25 of the field at
    sigma 10) and with no z component (which would move the single slice out of itself).
    """
    b = uniform_noise.shape[0]
    radius = int(_TRUNCATE * float(sigma.max()) + 0.5)
    kernels = gaussian_kernels(sigma.repeat_interleave(3), radius)
    in_plane = uniform_noise.shape[2] == 1
    smooth = _separable_filter(uniform_noise.reshape(b * 3, *uniform_noise.shape[2:]), kernels, "zeros",
                               (1, 2) if in_plane else (0, 1, 2))
    smooth = smooth.reshape(uniform_noise.shape) * alpha.to(smooth.dtype)[:, None, None, None, None]
    if in_plane:
        smooth[:, 0] = 0
    return smooth


def warp(x: torch.Tensor, displacement: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """Sample x (B, C, z, y, x) at voxel positions index + displacement (B, 3, z, y, x; z, y, x order)."""
    size = x.shape[2:]
    axes = [torch.arange(n, device=x.device, dtype=x.dtype) for n in size]
    base = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, z, y, x)
    pos = base[None] + displacement.to(x.dtype)
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in size], device=x.device, dtype=x.dtype)
    norm = pos * scale[None, :, None, None, None] - 1.0
    grid = norm.flip(1).permute(0, 2, 3, 4, 1)  # grid_sample wants (x, y, z) in the last dim
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def rotate_and_scale(displacement: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The displacement (B, 3, z, y, x; voxels, z y x order) that samples each voxel at
    ``centre + scale * R(angle) (index - centre + displacement)``: batchgenerators' ``augment_spatial``
    order (elastic, then rotation, then scaling) with its centre ``(n - 1) / 2`` per axis.

    ``R`` rotates the (y, x) components, as batchgenerators' ``rotate_coords_2d`` and the ``angle_x`` of
    ``rotate_coords_3d`` do: ``y' = y cos a + x sin a``, ``x' = -y sin a + x cos a``; angles (B,) in
    radians, scales (B,) factors.
    """
    size = displacement.shape[2:]
    dtype, dev = displacement.dtype, displacement.device
    axes = [torch.arange(n, device=dev, dtype=dtype) - (n - 1) / 2.0 for n in size]
    centred = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None] + displacement  # (B, 3, z, y, x)
    cos = torch.cos(angles).to(dtype)[:, None, None, None]
    sin = torch.sin(angles).to(dtype)[:, None, None, None]
    z, y, x = centred.unbind(1)
    moved = torch.stack([z, y * cos + x * sin, -y * sin + x * cos], dim=1)
    moved = moved * scales.to(dtype)[:, None, None, None, None]
    return moved - centred + displacement


def simulate_low_resolution(x: torch.Tensor, low_shape: tuple[int, int, int]) -> torch.Tensor:
    """Down-sample x (C, z, y, x) trilinearly to ``low_shape`` (z, y, x) and back by nearest neighbour."""
    low = F.interpolate(x[None], size=tuple(low_shape), mode="trilinear", align_corners=False)
    return F.interpolate(low, size=tuple(x.shape[1:]), mode="nearest-exact")[0]


def gamma_correct(x: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """Gamma per channel of x (B, C, z, y, x) with gammas (B, C) on min-max rescaled intensities.

    As batchgenerators' ``augment_gamma(per_channel=True, retain_stats=True)``: the channel's
    mean and (population) std are restored afterwards.
    """
    flat = x.flatten(2)
    mean = flat.mean(dim=2, keepdim=True)
    std = flat.std(dim=2, unbiased=False, keepdim=True)
    lo = flat.amin(dim=2, keepdim=True)
    rng = flat.amax(dim=2, keepdim=True) - lo + _GAMMA_EPS
    out = ((flat - lo) / rng).clamp_min(0).pow(gammas[..., None].to(x.dtype)) * rng + lo
    out = out - out.mean(dim=2, keepdim=True)
    out = out / (out.std(dim=2, unbiased=False, keepdim=True) + 1e-8) * std + mean
    return out.reshape(x.shape)


@dataclass
class GPUAugmenter:
    """Apply the planned augmentations to a batch on its own device (see the module docstring)."""

    plan: AugmentationPlan

    def __call__(self, data: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None,
                 in_plane: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment data (B, C, z, y, x) float and target (B, 1, z, y, x) {0, 1}; returns new tensors.

        in_plane: the samples are stacks of 2D slices (a ``2d`` configuration's k-slice samples): the slices
        are folded into the channels, so one in-plane field, zoom and mirroring serve every slice of a sample
        (as :func:`hiennu.training.augmentation.augment_sample` does on the CPU)."""
        b, c, depth = data.shape[:3]
        if not in_plane or depth == 1:
            return self._augment(data, target, generator, 1)
        height, width = data.shape[3:]
        data, target = self._augment(data.reshape(b, c * depth, 1, height, width),
                                     target.reshape(b, depth, 1, height, width), generator, depth)
        return (data.reshape(b, c, depth, height, width).contiguous(),
                target.reshape(b, 1, depth, height, width).contiguous())

    def _augment(self, data: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None,
                 slices_per_channel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`__call__` on tensors whose channels may be folded slices (``slices_per_channel`` of each
        input channel, channel-major), which the skipped channels are counted in."""
        p = self.plan
        g = generator
        data = data.float()
        target = target.float()
        b = data.shape[0]
        dev = data.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=g, device=dev)

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return lo + (hi - lo) * rand(*shape)

        if p.p_elastic > 0 or p.p_rotation > 0 or p.p_scale > 0:
            data, target = self._spatial(data, target, rand, uniform)

        skip = [int(c) * slices_per_channel + j for c in p.intensity_skip_channels for j in range(slices_per_channel)]
        kept = data[:, skip].clone() if skip else None

        if p.p_noise > 0:
            chosen = (rand(b) < p.p_noise).to(data.dtype)
            noise = torch.randn(data.shape, generator=g, device=dev)
            data = data + noise * (p.noise_std * chosen)[:, None, None, None, None]

        if p.p_blur > 0:
            chosen = _chosen(rand(b) < p.p_blur)
            sigmas = uniform(*p.blur_sigma, b, data.shape[1])
            if chosen.numel():
                data = data.index_copy(0, chosen, gaussian_blur(data[chosen], sigmas[chosen]))

        if p.p_lowres > 0:
            chosen = rand(b) < p.p_lowres
            zoom = uniform(1.0 / p.lowres_factor[1], 1.0 / p.lowres_factor[0], b, 3)
            size = torch.tensor(data.shape[2:], device=dev, dtype=torch.float32)
            low_shapes = torch.round(size[None] * zoom).long().clamp_min(1).tolist()
            out = list(data.unbind(0))
            for i in _chosen(chosen).tolist():
                out[i] = simulate_low_resolution(out[i], tuple(low_shapes[i]))
            data = torch.stack(out)

        if p.p_gamma > 0:
            chosen = _chosen(rand(b) < p.p_gamma)
            g_lo, g_hi = math.exp(p.log_gamma[0]), math.exp(p.log_gamma[1])
            below = rand(b, data.shape[1]) < 0.5
            u = rand(b, data.shape[1])
            if g_lo < 1:
                gammas = torch.where(below, g_lo + (1 - g_lo) * u, 1 + (max(g_hi, 1) - 1) * u)
            else:
                gammas = g_lo + (g_hi - g_lo) * u
            if chosen.numel():
                data = data.index_copy(0, chosen, gamma_correct(data[chosen], gammas[chosen]))

        if skip:
            data = data.clone()
            data[:, skip] = kept

        if p.p_mirror > 0:
            for axis in p.mirror_axes:
                flip = (rand(b) < p.p_mirror)[:, None, None, None, None]
                data = torch.where(flip, data.flip(2 + axis), data)
                target = torch.where(flip, target.flip(2 + axis), target)

        return data.contiguous(), target.contiguous()

    def _spatial(self, data: torch.Tensor, target: torch.Tensor, rand: Callable[..., torch.Tensor],
                 uniform: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Elastic deformation, rotation and scaling of the samples that draw any of them, in one warp.

        Rotation and scaling draw their random numbers only when their probability is above 0, so
        elastic-only plans draw exactly what they drew before the two existed.
        """
        p = self.plan
        b, dev = data.shape[0], data.device
        none = torch.zeros(b, dtype=torch.bool, device=dev)
        elastic, alpha, sigma = none, None, None
        if p.p_elastic > 0:
            elastic = rand(b) < p.p_elastic
            alpha = uniform(*p.elastic_alpha, b)
            sigma = uniform(*p.elastic_sigma, b)
        rotated, angles = none, torch.zeros(b, device=dev)
        if p.p_rotation > 0:
            rotated = rand(b) < p.p_rotation
            angles = torch.where(rotated, uniform(*(math.radians(a) for a in p.rotation_degrees), b), angles)
        scaled, factors = none, torch.ones(b, device=dev)
        if p.p_scale > 0:
            scaled = rand(b) < p.p_scale
            lo, hi = p.scale_range
            below = (rand(b) < 0.5) & (lo < 1)
            drawn = torch.where(below, uniform(lo, 1.0, b), uniform(max(lo, 1.0), hi, b))
            factors = torch.where(scaled, drawn, factors)
        chosen = _chosen(elastic | rotated | scaled)
        if not chosen.numel():
            return data, target
        disp = torch.zeros(chosen.numel(), 3, *data.shape[2:], device=dev)
        deformed = torch.nonzero(elastic[chosen], as_tuple=False).flatten()
        if deformed.numel():
            noise = rand(deformed.numel(), 3, *data.shape[2:]) * 2 - 1
            which = chosen[deformed]
            disp[deformed] = smooth_displacement(noise, alpha[which], sigma[which])
        if p.p_rotation > 0 or p.p_scale > 0:
            disp = rotate_and_scale(disp, angles[chosen], factors[chosen])
        data = data.index_copy(0, chosen, warp(data[chosen], disp, "bilinear", "border"))
        target = target.index_copy(0, chosen, warp(target[chosen], disp, "nearest", "zeros"))
        return data, target


def _chosen(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the samples where mask is True."""
    return torch.nonzero(mask, as_tuple=False).flatten()
