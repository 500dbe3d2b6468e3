"""Exact EDT: both back-ends against scipy, degenerate masks, spacing, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from hiennu.errors import HiennuError
from hiennu.losses import euclidean_distance_transform, hausdorff_distance_field

BACKENDS = ["torch", "itk"]


def _scipy(masks: np.ndarray, spacing=None) -> np.ndarray:
    return np.stack([ndi.distance_transform_edt(m, sampling=spacing) for m in masks])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
@pytest.mark.parametrize("spacing", [None, (2.5, 0.7, 1.1)])
def test_random_masks_match_scipy(backend, density, spacing):
    rng = np.random.default_rng(int(density * 100))
    masks = rng.random((3, 6, 9, 11)) < density
    masks[:, 0, 0, 0] = False  # every sample holds a zero voxel
    out = euclidean_distance_transform(torch.from_numpy(masks), spacing, backend=backend)
    assert out.dtype == torch.float32 and out.shape == masks.shape
    np.testing.assert_allclose(out.numpy(), _scipy(masks, spacing), atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_zero_voxel_is_hand_computed(backend):
    mask = np.ones((3, 4, 5), dtype=bool)
    mask[0, 0, 0] = False
    out = euclidean_distance_transform(torch.from_numpy(mask), spacing=(2.0, 1.0, 0.5), backend=backend)
    z, y, x = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    expected = np.sqrt((2.0 * z) ** 2 + y ** 2 + (0.5 * x) ** 2)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_object_voxel_and_thin_shell(backend):
    single = np.zeros((5, 5, 5), dtype=bool)
    single[2, 2, 2] = True
    out = euclidean_distance_transform(torch.from_numpy(single), backend=backend).numpy()
    assert out[2, 2, 2] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)

    z, y, x = np.meshgrid(*(np.arange(15),) * 3, indexing="ij")
    r = np.sqrt((z - 7) ** 2 + (y - 7) ** 2 + (x - 7) ** 2)
    for mask in (np.abs(r - 5) < 0.6, r < 6):  # one-voxel shell, and a ball whose inside is a shell's
        out = euclidean_distance_transform(torch.from_numpy(mask), backend=backend).numpy()
        np.testing.assert_allclose(out, ndi.distance_transform_edt(mask), atol=1e-4)
        bg = euclidean_distance_transform(torch.from_numpy(~mask), backend=backend).numpy()
        np.testing.assert_allclose(bg, ndi.distance_transform_edt(~mask), atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_anisotropic_shapes_and_unbatched_input(backend):
    rng = np.random.default_rng(3)
    for shape in [(1, 13, 4), (17, 1, 3), (2, 3, 40), (30, 2, 2)]:
        mask = rng.random(shape) < 0.8
        mask.flat[0] = False
        out = euclidean_distance_transform(torch.from_numpy(mask), spacing=(3.0, 0.5, 1.25), backend=backend)
        assert out.shape == shape
        np.testing.assert_allclose(out.numpy(), ndi.distance_transform_edt(mask, sampling=(3.0, 0.5, 1.25)),
                                   atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_full_masks(backend):
    masks = torch.zeros(2, 4, 5, 6, dtype=torch.bool)
    masks[1] = True
    out = euclidean_distance_transform(masks, backend=backend)
    assert torch.equal(out[0], torch.zeros(4, 5, 6))
    assert torch.isinf(out[1]).all()  # no zero voxel to measure from (documented convention)
    field = hausdorff_distance_field(masks, backend=backend)
    assert torch.equal(field, torch.zeros_like(field))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hausdorff_field_is_squared_distance_to_other_class(backend):
    mask = torch.zeros(1, 1, 1, 6, dtype=torch.bool)
    mask[..., 2:4] = True  # 0 0 1 1 0 0
    field = hausdorff_distance_field(mask, backend=backend)
    assert field.flatten().tolist() == [4.0, 1.0, 1.0, 1.0, 1.0, 4.0]


def test_long_lines_use_the_chunked_product_and_the_window():
    """A mask with long zero-free runs (whole-line product) and a dense one (short window) both match."""
    sparse = np.zeros((2, 4, 50, 60), dtype=bool)
    sparse[0, 1, 10, 20] = True
    sparse = ~sparse
    sparse[1] = np.random.default_rng(0).random((4, 50, 60)) < 0.3
    out = euclidean_distance_transform(torch.from_numpy(sparse), backend="torch")
    np.testing.assert_allclose(out.numpy(), _scipy(sparse), atol=1e-4)


def test_bad_input_is_explained():
    with pytest.raises(HiennuError, match="shape"):
        euclidean_distance_transform(torch.zeros(1, 1, 2, 3, 4, dtype=torch.bool))
    with pytest.raises(HiennuError, match="spacing"):
        euclidean_distance_transform(torch.zeros(2, 3, 4, dtype=torch.bool), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(HiennuError, match="backend"):
        euclidean_distance_transform(torch.zeros(2, 3, 4, dtype=torch.bool), backend="gpu")
    with pytest.raises(HiennuError, match="NaN"):
        euclidean_distance_transform(torch.full((2, 3, 4), float("nan")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_scipy():
    rng = np.random.default_rng(5)
    masks = rng.random((2, 16, 64, 64)) < 0.7
    masks[:, 0, 0, 0] = False
    out = euclidean_distance_transform(torch.from_numpy(masks).cuda(), (2.0, 1.0, 1.0))
    assert out.is_cuda
    np.testing.assert_allclose(out.cpu().numpy(), _scipy(masks, (2.0, 1.0, 1.0)), atol=1e-4)


def test_real_bonbid_label_matches_scipy(real_bonbid_dir):
    import SimpleITK as sitk

    path = sorted((real_bonbid_dir / "3LABEL").glob("*.mha"))[0]
    image = sitk.ReadImage(str(path))
    label = sitk.GetArrayFromImage(image) > 0.5
    spacing_zyx = image.GetSpacing()[::-1]
    assert label.any(), f"{path.name} has no lesion; pick another case"
    for mask in (label, ~label):
        expected = ndi.distance_transform_edt(mask, sampling=spacing_zyx)
        out = euclidean_distance_transform(torch.from_numpy(mask), spacing_zyx, backend="itk")
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, err_msg=path.name)
    crop = label[:, ::4, ::4]  # keep the torch back-end's CPU time small
    out = euclidean_distance_transform(torch.from_numpy(~crop), spacing_zyx, backend="torch")
    np.testing.assert_allclose(out.numpy(), ndi.distance_transform_edt(~crop, sampling=spacing_zyx), atol=1e-4)
