"""In-plane rotation and scaling (``p_rotation``, ``p_scale``): the batchgenerators path and the torch path
against an exact quarter turn, against each other at fixed angles and factors, and over many samples;
the plans' checks of the new fields."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from hiennu.plans import AugmentationPlan, PlansError, configuration_from_dict
from hiennu.training.augmentation import augment_sample, build_transforms
from hiennu.training.gpu_augmentation import GPUAugmenter, rotate_and_scale
from helpers import tiny_plans

SHAPE = (6, 20, 20)  # z y x; square in-plane, so a quarter turn keeps the grid
OFF = dict(p_noise=0.0, p_lowres=0.0, p_blur=0.0, p_gamma=0.0, p_elastic=0.0, p_mirror=0.0)


def only(**kw) -> AugmentationPlan:
    return dataclasses.replace(AugmentationPlan(), **{**OFF, **kw})


def sample(shape=SHAPE, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = np.stack([gaussian_filter(rng.standard_normal(shape), 1.5) * 4 for _ in range(2)]).astype(np.float32)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    seg = (y - 6) ** 2 / 16 + (x - 12) ** 2 / 9 < 1  # off-centre, so a turn moves it
    if shape[0] > 2:  # away from the first and last slice, where the two paths' borders differ (below)
        seg &= (z >= 1) & (z <= shape[0] - 2)
    return data, seg[None].astype(np.uint8)


def cpu(plan, data, seg, seed=0, grid=None):
    return augment_sample(build_transforms(plan, grid or data.shape[1:]), data, seg, seed)


def gpu(plan, data, seg, n=1, seed=0):
    d = torch.from_numpy(data)[None].repeat(n, 1, 1, 1, 1)
    s = torch.from_numpy(seg.astype(np.float32))[None].repeat(n, 1, 1, 1, 1)
    out_d, out_s = GPUAugmenter(plan)(d, s, torch.Generator().manual_seed(seed))
    return out_d.numpy(), out_s.numpy()


def test_a_quarter_turn_is_rot90_in_plane_on_both_paths():
    data, seg = sample()
    plan = only(p_rotation=1.0, rotation_degrees=[90.0, 90.0])
    want_d, want_s = np.rot90(data, 1, axes=(2, 3)), np.rot90(seg, 1, axes=(2, 3))
    d, s = cpu(plan, data, seg)
    np.testing.assert_allclose(d, want_d, atol=1e-4)
    np.testing.assert_array_equal(s, want_s)
    d, s = gpu(plan, data, seg)
    np.testing.assert_allclose(d[0], want_d, atol=1e-4)
    np.testing.assert_array_equal(s[0], want_s)


def test_the_2d_pipeline_turns_a_slice_the_same_way():
    data, seg = sample((1, 20, 20))
    plan = only(p_rotation=1.0, rotation_degrees=[-90.0, -90.0])
    d, s = cpu(plan, data, seg, grid=(20, 20))
    np.testing.assert_allclose(d, np.rot90(data, -1, axes=(2, 3)), atol=1e-4)
    np.testing.assert_array_equal(s, np.rot90(seg, -1, axes=(2, 3)))
    d, s = gpu(plan, data, seg)
    np.testing.assert_allclose(d[0], np.rot90(data, -1, axes=(2, 3)), atol=1e-4)


@pytest.mark.parametrize("degrees, factor", [(30.0, 1.0), (0.0, 1.3), (-50.0, 1.1), (120.0, 1.25)])
def test_both_paths_resample_alike_at_a_fixed_angle_and_factor(degrees, factor):
    """(A factor below 1 cannot be fixed: batchgenerators then draws in (lo, 1) whatever the upper end.)"""
    data, seg = sample(seed=3)
    plan = only(p_rotation=1.0, rotation_degrees=[degrees, degrees], p_scale=1.0, scale_range=[factor, factor])
    cd, cs = cpu(plan, data, seg)
    gd, gs = gpu(plan, data, seg)
    np.testing.assert_allclose(gd[0], cd, atol=2e-4)
    # Nearest neighbour may break a tie (a position half-way between voxels) the other way. At the grid's
    # edge scipy's constant mode gives 0 beyond the last voxel centre and grid_sample only half a voxel
    # further out; sample() keeps the mask off the edge slices that scaling reaches.
    assert (gs[0] != cs).mean() < 0.01
    assert set(np.unique(gs)) <= {0.0, 1.0} and set(np.unique(cs)) <= {0.0, 1.0}
    if degrees or factor != 1.0:
        assert not np.allclose(cd, data, atol=1e-3)


def test_scaling_samples_about_the_centre():
    """A factor of 1.5 samples the grid at 1.5-voxel steps from its centre: structures shrink by 1.5."""
    shape = (3, 21, 21)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    data = np.stack([y.astype(np.float32), x.astype(np.float32)])
    seg = np.zeros((1, *shape), np.uint8)
    plan = only(p_scale=1.0, scale_range=[1.5, 1.5])
    inside = (slice(None), slice(4, 17), slice(4, 17))  # sampled positions within the grid
    for d in (cpu(plan, data, seg)[0], gpu(plan, data, seg)[0][0]):
        np.testing.assert_allclose(d[0][inside], (10 + (y - 10) * 1.5)[inside], atol=1e-4)
        np.testing.assert_allclose(d[1][inside], (10 + (x - 10) * 1.5)[inside], atol=1e-4)


def test_factors_below_one_are_drawn_half_of_the_time():
    data, seg = sample(seed=4)
    plan = only(p_scale=1.0, scale_range=[0.5, 2.0])
    corner = (0, 3, 3, 10)  # y = 3, 6.5 voxels above the centre: it samples y > 3 for a factor below 1
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    ramp = np.stack([y.astype(np.float32), y.astype(np.float32)])
    below_cpu = [cpu(plan, ramp, seg, seed=i)[0][corner] > 3.0 for i in range(200)]
    gd, _ = gpu(plan, ramp, seg, n=200)
    below_gpu = [gd[i][corner] > 3.0 for i in range(200)]
    for below in (below_cpu, below_gpu):
        assert abs(np.mean(below) - 0.5) < 0.1


def test_rotate_and_scale_with_nothing_to_do_keeps_the_displacement():
    disp = torch.randn(2, 3, 4, 5, 6)
    out = rotate_and_scale(disp, torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(out, disp, atol=1e-5, rtol=0)


def test_how_often_and_how_far_samples_turn_on_both_paths():
    data, seg = sample(seed=5)
    n = 300
    plan = only(p_rotation=0.3, rotation_degrees=[-180.0, 180.0], p_scale=0.2, scale_range=[0.7, 1.4])
    cpu_moved = np.array([not np.allclose(cpu(plan, data, seg, seed=i)[0], data, atol=1e-5) for i in range(n)])
    gd, _ = gpu(plan, data, seg, n=n)
    gpu_moved = np.array([not np.allclose(gd[i], data, atol=1e-5) for i in range(n)])
    expected = 1 - 0.7 * 0.8  # rotated or scaled or both
    for moved in (cpu_moved, gpu_moved):
        assert abs(moved.mean() - expected) < 0.08


def test_without_rotation_and_scaling_a_seeded_batch_is_what_it_was():
    """The new draws happen only when asked for: elastic-only plans replay the same batch bit for bit."""
    data, seg = sample(seed=7)
    plan = only(p_elastic=1.0, elastic_alpha=[0.0, 400.0], p_noise=0.5)
    d0, s0 = gpu(plan, data, seg, n=4, seed=11)
    zero = dataclasses.replace(plan, p_rotation=0.0, p_scale=0.0, rotation_degrees=[-10.0, 10.0])
    d1, s1 = gpu(zero, data, seg, n=4, seed=11)
    np.testing.assert_array_equal(d0, d1)
    np.testing.assert_array_equal(s0, s1)
    np.testing.assert_array_equal(cpu(plan, data, seg, seed=2)[0], cpu(zero, data, seg, seed=2)[0])


def test_elastic_rotation_and_scaling_together_keep_a_binary_mask_and_its_size():
    data, seg = sample((1, 40, 40), seed=9)
    plan = only(p_elastic=1.0, p_rotation=1.0, rotation_degrees=[-20.0, 20.0], p_scale=1.0, scale_range=[0.9, 1.1])
    sizes = []
    for i in range(20):
        _, s = cpu(plan, data, seg, seed=i, grid=(40, 40))
        assert set(np.unique(s)) <= {0.0, 1.0}
        sizes.append(s.sum() / seg.sum())
    _, gs = gpu(plan, data, seg, n=20)
    assert set(np.unique(gs)) <= {0.0, 1.0}
    sizes += list(gs.sum(axis=(1, 2, 3, 4)) / seg.sum())
    assert 0.75 < np.mean(sizes) < 1.3


def _config(**augmentation) -> dict:
    config = dataclasses.asdict(next(iter(tiny_plans().configurations.values())))
    config["augmentation"].update(augmentation)
    return config


@pytest.mark.parametrize("edit, field", [({"p_rotation": 1.5}, "p_rotation"), ({"p_scale": -0.1}, "p_scale"),
                                         ({"rotation_degrees": [30.0, -30.0]}, "rotation_degrees"),
                                         ({"rotation_degrees": [-200.0, 0.0]}, "rotation_degrees"),
                                         ({"scale_range": [0.0, 1.4]}, "scale_range"),
                                         ({"scale_range": [1.4, 0.7]}, "scale_range")])
def test_plans_name_a_bad_rotation_or_scale(edit, field):
    with pytest.raises(PlansError, match=field):
        configuration_from_dict(_config(**edit), "plans.json")


def test_plans_written_before_rotation_and_scaling_existed_load_without_them():
    d = _config()
    for key in ("p_rotation", "rotation_degrees", "p_scale", "scale_range"):
        del d["augmentation"][key]
    config = configuration_from_dict(json.loads(json.dumps(d)), "plans.json")
    assert config.augmentation.p_rotation == 0.0 and config.augmentation.p_scale == 0.0
