"""Augmentation: the torch path against scipy/scikit-image/batchgenerators (exact, fixed parameters)
and against the batchgenerators CPU path (distributions over many samples, fixed seeds)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from batchgenerators.augmentations.color_augmentations import augment_gamma
from batchgenerators.augmentations.resample_augmentations import augment_linear_downsampling_scipy
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.stats import ks_2samp

from hiennu.plans import AugmentationPlan
from hiennu.training.augmentation import augment_sample, build_transforms
from hiennu.training.gpu_augmentation import (GPUAugmenter, gamma_correct, gaussian_blur, simulate_low_resolution,
                                              smooth_displacement, warp)

SHAPE = (16, 24, 24)
OFF = dict(p_noise=0.0, p_lowres=0.0, p_blur=0.0, p_gamma=0.0, p_elastic=0.0, p_mirror=0.0)


def only(**kw) -> AugmentationPlan:
    return dataclasses.replace(AugmentationPlan(), **{**OFF, **kw})


def smooth_image(seed: int = 0, channels: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([gaussian_filter(rng.standard_normal(SHAPE), 2.0) * 5 for _ in range(channels)]).astype(np.float32)


def blob_mask() -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return (((z - 8) / 5) ** 2 + ((y - 12) / 7) ** 2 + ((x - 11) / 6) ** 2 < 1)[None].astype(np.uint8)


def run_cpu(plan, data, seg, n):
    t = build_transforms(plan, SHAPE)
    return [augment_sample(t, data, seg, seed) for seed in range(n)]


def run_torch(plan, data, seg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.from_numpy(data)[None].repeat(n, 1, 1, 1, 1)
    s = torch.from_numpy(seg.astype(np.float32))[None].repeat(n, 1, 1, 1, 1)
    out_d, out_s = GPUAugmenter(plan)(d, s, g)
    return [(out_d[i].numpy(), out_s[i].numpy()) for i in range(n)]


def same_distribution(a, b) -> bool:
    return ks_2samp(a, b).pvalue > 1e-3


# ---------- building blocks, exact against the reference libraries ----------

def test_blur_matches_scipy_reflect():
    x = np.random.default_rng(1).standard_normal((2, 2, *SHAPE)).astype(np.float32)
    sigmas = np.array([[0.0, 0.1], [0.3, 0.5]], dtype=np.float32)
    out = gaussian_blur(torch.from_numpy(x), torch.from_numpy(sigmas)).numpy()
    for b in range(2):
        for c in range(2):
            ref = gaussian_filter(x[b, c], float(sigmas[b, c]), mode="reflect") if sigmas[b, c] > 0 else x[b, c]
            np.testing.assert_allclose(out[b, c], ref, atol=2e-6)


def test_elastic_displacement_matches_batchgenerators_formula():
    u = np.random.default_rng(2).uniform(-1, 1, (2, 3, *SHAPE)).astype(np.float32)
    alpha, sigma = np.array([150.0, 30.0]), np.array([9.5, 12.0])  # kernels longer than the z axis
    out = smooth_displacement(torch.from_numpy(u), torch.tensor(alpha), torch.tensor(sigma)).numpy()
    for b in range(2):
        for k in range(3):
            ref = gaussian_filter(u[b, k].astype(np.float64), sigma[b], mode="constant", cval=0) * alpha[b]
            np.testing.assert_allclose(out[b, k], ref, atol=1e-5 * alpha[b])


def test_warp_matches_map_coordinates():
    x = smooth_image(3)
    seg = blob_mask()
    disp = np.random.default_rng(3).uniform(-1.7, 1.7, (1, 3, *SHAPE)).astype(np.float32)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")) + disp[0]
    out = warp(torch.from_numpy(x)[None], torch.from_numpy(disp), "bilinear", "border")[0].numpy()
    for c in range(2):
        np.testing.assert_allclose(out[c], map_coordinates(x[c], coords, order=1, mode="nearest"), atol=1e-4)
    out_seg = warp(torch.from_numpy(seg.astype(np.float32))[None], torch.from_numpy(disp), "nearest", "zeros")[0]
    ref_seg = map_coordinates(seg[0].astype(float), coords, order=0, mode="constant", cval=0)
    assert (out_seg[0].numpy() != ref_seg).mean() < 0.002  # only exact .5 ties may round differently


def test_zero_displacement_is_identity():
    x = torch.from_numpy(smooth_image(4))[None]
    out = warp(x, torch.zeros(1, 3, *SHAPE), "bilinear", "border")
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("zoom", [(0.5, 0.6, 0.8), (0.83, 0.55, 0.71)])
def test_low_resolution_matches_batchgenerators(zoom):
    x = smooth_image(5)
    ref = augment_linear_downsampling_scipy(x.copy(), zoom_range=tuple((z, z) for z in zoom), per_channel=False,
                                            order_downsample=1, order_upsample=0)
    low = tuple(int(v) for v in np.round(np.array(SHAPE) * np.array(zoom)))
    out = simulate_low_resolution(torch.from_numpy(x), low).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_gamma_matches_batchgenerators():
    x = smooth_image(6)
    ref = augment_gamma(x.copy().astype(np.float64), gamma_range=(1.07, 1.07), per_channel=True, retain_stats=True)
    out = gamma_correct(torch.from_numpy(x)[None], torch.full((1, 2), 1.07))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=2e-5)


# ---------- the augmenter itself ----------

def test_augmenter_shapes_determinism_and_binary_target():
    data = torch.from_numpy(smooth_image(7))[None].repeat(3, 1, 1, 1, 1)
    seg = torch.from_numpy(blob_mask().astype(np.float32))[None].repeat(3, 1, 1, 1, 1)
    data_in, seg_in = data.clone(), seg.clone()
    aug = GPUAugmenter(dataclasses.replace(AugmentationPlan(), p_mirror=0.5, mirror_axes=[0, 1, 2]))
    a = aug(data, seg, torch.Generator().manual_seed(3))
    b = aug(data, seg, torch.Generator().manual_seed(3))
    c = aug(data, seg, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(data, data_in) and torch.equal(seg, seg_in)
    for out in (a, c):
        assert out[0].shape == data.shape and out[0].dtype == torch.float32 and out[0].device == data.device
        assert out[1].shape == seg.shape and out[1].dtype == torch.float32
        assert set(torch.unique(out[1]).tolist()) <= {0.0, 1.0}


def test_all_probabilities_zero_is_identity():
    data = torch.from_numpy(smooth_image(8))[None]
    seg = torch.from_numpy(blob_mask().astype(np.float32))[None]
    out = GPUAugmenter(only())(data, seg, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], data) and torch.equal(out[1], seg)


# ---------- distributions: torch path vs batchgenerators path ----------

N = 240


@pytest.fixture(scope="module")
def image():
    return smooth_image(9), blob_mask()


def test_noise_statistics(image):
    data, seg = image
    plan = only(p_noise=0.5)
    stats = {}
    for name, outs in (("cpu", run_cpu(plan, data, seg, N)), ("torch", run_torch(plan, data, seg, N))):
        stats[name] = np.array([float(np.std(d - data)) for d, _ in outs])
        applied = stats[name] > 0
        assert abs(applied.mean() - 0.5) < 0.1
        assert np.allclose(stats[name][applied], 0.01, rtol=0.03)
        assert abs(np.mean([float(np.mean(d - data)) for d, _ in outs])) < 2e-4
    assert same_distribution(stats["cpu"], stats["torch"])


def test_blur_statistics_on_a_delta(image):
    _, seg = image
    delta = np.zeros((2, *SHAPE), dtype=np.float32)
    delta[:, 8, 12, 12] = 1.0
    plan = only(p_blur=0.5)
    centre = {name: np.array([d[0, 8, 12, 12] for d, _ in outs])
              for name, outs in (("cpu", run_cpu(plan, delta, seg, N)), ("torch", run_torch(plan, delta, seg, N)))}
    for v in centre.values():  # sigma < 0.125 gives scipy a radius-0 kernel: 1/4 of the draws change nothing
        assert abs((v < 1).mean() - 0.5 * 0.75) < 0.1
        assert v.min() > gaussian_filter(delta[0], 0.5)[8, 12, 12] - 1e-6  # sigma never above 0.5
    assert same_distribution(centre["cpu"], centre["torch"])


def test_low_resolution_statistics(image):
    data, seg = image
    plan = only(p_lowres=0.5)
    change = {name: np.array([float(np.abs(d - data).mean()) for d, _ in outs])
              for name, outs in (("cpu", run_cpu(plan, data, seg, N)), ("torch", run_torch(plan, data, seg, N)))}
    for v in change.values():
        assert abs((v > 0).mean() - 0.5) < 0.1
    assert same_distribution(change["cpu"], change["torch"])
    wrong = run_torch(only(p_lowres=0.5, lowres_factor=[2.0, 3.0]), data, seg, N)
    assert not same_distribution(change["cpu"], [float(np.abs(d - data).mean()) for d, _ in wrong])


def test_gamma_statistics(image):
    data, seg = image

    def median_shift(outs):
        return np.array([float(np.median(d[0]) - np.median(data[0])) for d, _ in outs])

    plan = only(p_gamma=0.5)
    cpu, tch = median_shift(run_cpu(plan, data, seg, N)), median_shift(run_torch(plan, data, seg, N))
    for v in (cpu, tch):
        assert abs((v != 0).mean() - 0.5) < 0.1
    assert same_distribution(cpu, tch)
    assert not same_distribution(cpu, median_shift(run_torch(only(p_gamma=0.5, log_gamma=[-0.3, 0.3]), data, seg, N)))


def test_elastic_statistics(image):
    data, seg = image

    def summary(outs):
        changed = np.array([float((s != seg).mean()) for _, s in outs])
        kept = np.array([float(s.sum() / seg.sum()) for _, s in outs])
        moved = np.array([float(np.abs(d - data).mean()) for d, _ in outs])
        return changed, kept, moved

    plan = only(p_elastic=0.5, elastic_alpha=[0.0, 1500.0])  # large enough to move voxels on a tiny grid
    cpu, tch = summary(run_cpu(plan, data, seg, N)), summary(run_torch(plan, data, seg, N))
    for changed, kept, moved in (cpu, tch):
        assert abs((moved > 1e-6).mean() - 0.5) < 0.1
        assert (changed > 0).mean() > 0.25
        assert abs(kept.mean() - 1.0) < 0.03  # the mask fraction is preserved on average
    assert same_distribution(cpu[0], tch[0])
    assert same_distribution(cpu[2], tch[2])
    wrong = summary(run_torch(only(p_elastic=0.5, elastic_alpha=[0.0, 4500.0]), data, seg, N))
    assert not same_distribution(cpu[0], wrong[0])


def test_in_plane_elastic_matches_batchgenerators_on_a_2d_grid():
    """A ``2d`` configuration's slice (z = 1) is deformed in-plane as batchgenerators deforms a 2D grid, on both
    paths: the same distribution of how far the coordinates move, and the slice's label is not lost. The torch
    path once smoothed the noise along the single z voxel too, which kept 1/25 of the field (0.09 voxels moved on
    average against 2.4)."""
    h = w = 64
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    data = np.stack([yy, xx])[:, None]                                        # (C, z=1, y, x): coordinate maps
    seg = ((((yy - 32) ** 2 + (xx - 32) ** 2) < 15 ** 2)[None, None]).astype(np.uint8)
    plan = only(p_elastic=1.0, elastic_alpha=[200.0, 200.0], elastic_sigma=[10.0, 10.0])
    transforms = build_transforms(plan, (h, w))
    cpu = [augment_sample(transforms, data, seg, seed) for seed in range(40)]
    out_d, out_s = GPUAugmenter(plan)(torch.from_numpy(data)[None].repeat(40, 1, 1, 1, 1),
                                      torch.from_numpy(seg.astype(np.float32))[None].repeat(40, 1, 1, 1, 1),
                                      torch.Generator().manual_seed(0), in_plane=True)
    moved_cpu = np.array([np.abs(d - data).mean() for d, _ in cpu])
    moved_torch = np.abs(out_d.numpy() - data[None]).mean(axis=(1, 2, 3, 4))
    assert 1.0 < moved_cpu.mean() < 5.0 and same_distribution(moved_cpu, moved_torch), (moved_cpu.mean(),
                                                                                          moved_torch.mean())
    kept_cpu = np.array([s.sum() / seg.sum() for _, s in cpu])
    kept_torch = out_s.numpy().sum(axis=(1, 2, 3, 4)) / seg.sum()
    assert abs(kept_torch.mean() - 1.0) < 0.06 and kept_torch.min() > 0.3 and same_distribution(kept_cpu, kept_torch)


def test_mirror_frequency(image):
    data, seg = image
    plan = only(p_mirror=0.3, mirror_axes=[0, 2])
    flips = {(False, False): (), (True, False): (1,), (False, True): (3,), (True, True): (1, 3)}
    for outs in (run_cpu(plan, data, seg, N), run_torch(plan, data, seg, N)):
        seen = []
        for d, s in outs:
            match = [k for k, axes in flips.items() if np.array_equal(d, np.flip(data, axes) if axes else data)]
            assert len(match) == 1
            axes = flips[match[0]]
            assert np.array_equal(s, np.flip(seg, axes) if axes else seg)  # mask flipped with the image
            seen.append(match[0])
        seen = np.array(seen)
        assert abs(seen[:, 0].mean() - 0.3) < 0.09 and abs(seen[:, 1].mean() - 0.3) < 0.09


# ---------- real data ----------

def test_real_cases_keep_binary_masks_and_lesion_volume(real_bonbid_dir):
    from scipy.ndimage import zoom

    from hiennu.io.image import read_image

    adc_files = sorted((real_bonbid_dir / "1ADC_ss").glob("*.mha"))[:2]
    plan = dataclasses.replace(AugmentationPlan(), p_elastic=1.0, p_noise=1.0, p_blur=1.0, p_lowres=1.0, p_gamma=1.0)
    for adc_file in adc_files:
        stem = adc_file.name.replace("-ADC_ss.mha", "")
        adc, _ = read_image(adc_file)
        label, _ = read_image(real_bonbid_dir / "3LABEL" / f"{stem}_lesion.mha")
        factors = np.array(SHAPE) / np.array(adc.shape)
        img = zoom(adc.astype(np.float32), factors, order=1)
        img = ((img - img.mean()) / img.std()).astype(np.float32)
        data = np.stack([img, img])
        seg = (zoom(label.astype(np.float32), factors, order=0) > 0.5)[None].astype(np.uint8)
        for d, s in run_cpu(plan, data, seg, 3) + run_torch(plan, data, seg, 3):
            assert np.isfinite(d).all() and set(np.unique(s)) <= {0.0, 1.0}
            if seg.sum() > 50:
                assert abs(s.sum() / seg.sum() - 1) < 0.5
