"""Resampling to the grid and back: analytic values, exact round trips, types and devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiennu.geometry.resampling import (resample_image_to_grid, resample_label_to_grid,
                                        resample_label_to_native, resample_probabilities_to_native,
                                        signed_distance)


def test_trilinear_upsampling_aligns_voxel_centres_like_align_corners_false():
    a = np.zeros((1, 1, 2), np.float32)
    a[..., 1] = 1.0
    out = resample_image_to_grid(a, (1, 1, 4))
    # source coordinate of target voxel j: (j + 0.5) * 2 / 4 - 0.5, clamped to [0, 1]
    np.testing.assert_allclose(out[0, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    assert out.dtype == np.float32


def test_same_size_is_identity_and_channels_are_kept():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    out = resample_image_to_grid(a, (5, 6, 7))
    np.testing.assert_array_equal(out, a)
    assert resample_image_to_grid(a, (8, 12, 14)).shape == (2, 8, 12, 14)


@pytest.mark.parametrize("native,grid", [((7, 13, 11), (16, 16, 16)), ((16, 16, 16), (16, 32, 48)),
                                         ((23, 128, 128), (32, 160, 160))])
def test_nearest_round_trip_is_exact_on_a_covering_grid(native, grid):
    rng = np.random.default_rng(1)
    label = (rng.random(native) > 0.8).astype(np.uint8)
    back = resample_label_to_native(resample_label_to_grid(label, grid, "nearest"), native)
    np.testing.assert_array_equal(back, label)
    assert back.dtype == np.uint8


def test_signed_distance_values():
    m = np.zeros((1, 1, 7), bool)
    m[..., 2:5] = True
    np.testing.assert_allclose(signed_distance(m)[0, 0], [1.5, 0.5, -0.5, -1.5, -0.5, 0.5, 1.5])
    assert (signed_distance(np.zeros((2, 2, 2))) > 0).all()
    assert (signed_distance(np.ones((2, 2, 2))) < 0).all()


def test_sdf_mode_keeps_empty_full_and_a_sphere():
    z, y, x = np.mgrid[:20, :40, :40]
    sphere = ((z - 10) ** 2 / 36 + ((y - 20) ** 2 + (x - 20) ** 2) / 144 < 1).astype(np.uint8)
    grid = resample_label_to_grid(sphere, (16, 32, 32), "sdf")
    back = resample_label_to_native(grid, sphere.shape, "sdf")
    dice = 2 * (back & sphere).sum() / (back.sum() + sphere.sum())
    assert dice > 0.97
    assert resample_label_to_grid(np.zeros((4, 4, 4)), (8, 8, 8), "sdf").sum() == 0
    assert resample_label_to_grid(np.ones((4, 4, 4)), (8, 8, 8), "sdf").all()


def test_unknown_label_mode_raises():
    with pytest.raises(ValueError, match="label interpolation"):
        resample_label_to_grid(np.zeros((2, 2, 2)), (4, 4, 4), "cubic")


def test_torch_in_torch_out_and_leading_axes_kept():
    prob = torch.rand(2, 1, 8, 8, 8)
    out = resample_probabilities_to_native(prob, (5, 9, 7))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 5, 9, 7) and out.device == prob.device
    out3 = resample_probabilities_to_native(prob[0, 0].numpy(), (5, 9, 7), mode="nearest")
    assert isinstance(out3, np.ndarray) and out3.shape == (5, 9, 7)
    lab = resample_label_to_grid(torch.ones(3, 3, 3), (6, 6, 6))
    assert isinstance(lab, torch.Tensor) and lab.dtype == torch.uint8 and bool(lab.all())


def test_constant_probabilities_stay_constant():
    prob = np.full((4, 6, 6), 0.7, np.float32)
    np.testing.assert_allclose(resample_probabilities_to_native(prob, (9, 5, 11)), 0.7, atol=1e-6)


def test_bad_size_raises():
    with pytest.raises(ValueError, match="three positive"):
        resample_image_to_grid(np.zeros((2, 2, 2)), (0, 2, 2))


def test_nearest_image_resampling_copies_the_nearest_voxel_and_commutes_with_a_threshold():
    a = np.zeros((1, 1, 2), np.float32)
    a[..., 1] = 1.0
    np.testing.assert_array_equal(resample_image_to_grid(a, (1, 1, 4), "nearest")[0, 0], [0.0, 0.0, 1.0, 1.0])
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.5, (5, 9, 8)).astype(np.float32)
    grid = resample_image_to_grid(z, (10, 11, 10), "nearest")
    assert set(np.unique(grid)) <= set(np.unique(z))  # no value invented between slices
    np.testing.assert_array_equal(grid < -2, resample_label_to_grid(z < -2, (10, 11, 10), "nearest") > 0)
    # trilinear values between thick slices do not commute with the threshold
    assert ((resample_image_to_grid(z, (10, 11, 10)) < -2) != (grid < -2)).any()


def test_unknown_image_interpolation_is_refused():
    with pytest.raises(ValueError, match="image interpolation 'cubic'"):
        resample_image_to_grid(np.zeros((2, 2, 2)), (4, 4, 4), "cubic")
