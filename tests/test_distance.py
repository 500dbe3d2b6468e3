"""Exact EDT: every back-end against scipy, degenerate masks, spacing, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from hiennu.errors import HiennuError
from hiennu.losses import euclidean_distance_transform, hausdorff_distance_field
from hiennu.losses.distance import native_available

BACKENDS = ["native", "torch", "itk"]


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


def test_the_native_extension_is_built():
    """`pip install -e .` compiles hiennu/losses/_edt.c; without it 'auto' silently falls back to ITK."""
    assert native_available(), "hiennu.losses._edt is missing: run `pip install -e .` (needs a C compiler)"
    from hiennu.losses.distance import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "native"


@pytest.mark.parametrize("density", [0.002, 0.05, 0.5, 0.9])
@pytest.mark.parametrize("spacing", [None, (3.0, 0.5, 1.25)])
def test_native_both_paths_match_scipy_on_larger_volumes(density, spacing):
    """Sparse masks take the parabola envelope (long reach), dense ones the windowed minimum; lines of
    more than one gathered block (x > 32) and planes of mixed finite and infinite lines included."""
    rng = np.random.default_rng(int(density * 1000))
    masks = rng.random((2, 9, 37, 70)) < density
    masks[1, :, :, :35] = False  # half a volume without features for the background transform
    for mask in (masks, ~masks):
        out = euclidean_distance_transform(torch.from_numpy(mask), spacing, backend="native")
        expected = _scipy(mask, spacing)
        no_zero_voxel = mask.reshape(2, -1).all(axis=1)  # such a sample is +inf (convention)
        for b in range(2):
            if no_zero_voxel[b]:
                assert torch.isinf(out[b]).all()
            else:
                np.testing.assert_allclose(out[b].numpy(), expected[b], atol=1e-4)


def test_native_hausdorff_field_is_the_sum_of_two_transforms_and_accumulates():
    from hiennu.losses import _edt

    rng = np.random.default_rng(11)
    mask = rng.random((6, 20, 45)) < 0.3
    spacing = (2.0, 1.0, 0.75)
    expected = (ndi.distance_transform_edt(mask, sampling=spacing) ** 2
                + ndi.distance_transform_edt(~mask, sampling=spacing) ** 2)
    out = np.full(mask.shape, np.nan, dtype=np.float32)
    assert _edt.hausdorff_field(mask, out, spacing) is False
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    _edt.hausdorff_field(mask, out, spacing, True)
    np.testing.assert_allclose(out, 2 * expected, rtol=1e-5, atol=1e-4)
    assert _edt.hausdorff_field(np.zeros((2, 3, 4), bool), np.empty((2, 3, 4), np.float32), (1.0, 1.0, 1.0))


def test_native_rejects_bad_buffers():
    from hiennu.losses import _edt

    mask = np.zeros((3, 4, 5), dtype=bool)
    with pytest.raises(ValueError, match="float32"):
        _edt.squared_edt(mask, np.zeros((3, 4, 5), np.float64), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        _edt.squared_edt(mask, np.zeros((3, 4, 6), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="3D"):
        _edt.squared_edt(np.zeros((3, 4), bool), np.zeros((3, 4), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        _edt.hausdorff_field(mask, np.zeros((3, 4, 5), np.float32), (1.0, -1.0, 1.0))
    with pytest.raises((ValueError, BufferError)):
        _edt.squared_edt(np.zeros((3, 4, 10), bool)[:, :, ::2], np.zeros((3, 4, 5), np.float32), (1.0, 1.0, 1.0))


def test_batches_are_spread_over_threads_with_the_same_result():
    rng = np.random.default_rng(4)
    masks = torch.from_numpy(rng.random((5, 6, 20, 20)) < 0.4)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = euclidean_distance_transform(masks, backend="native")
        torch.set_num_threads(2)
        two = euclidean_distance_transform(masks, backend="native")
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


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
@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_cuda_matches_scipy(backend):
    from hiennu.losses.distance import _triton_module

    if backend == "triton" and _triton_module() is None:
        pytest.skip("needs the triton package")
    rng = np.random.default_rng(5)
    masks = rng.random((2, 16, 64, 64)) < 0.7
    masks[:, 0, 0, 0] = False
    out = euclidean_distance_transform(torch.from_numpy(masks).cuda(), (2.0, 1.0, 1.0), backend=backend)
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
        for backend in ("native", "itk"):
            out = euclidean_distance_transform(torch.from_numpy(mask), spacing_zyx, backend=backend)
            np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, err_msg=f"{path.name} {backend}")
    crop = label[:, ::4, ::4]  # keep the torch back-end's CPU time small
    out = euclidean_distance_transform(torch.from_numpy(~crop), spacing_zyx, backend="torch")
    np.testing.assert_allclose(out.numpy(), ndi.distance_transform_edt(~crop, sampling=spacing_zyx), atol=1e-4)


def test_a_failing_triton_kernel_falls_back_to_torch_under_auto(monkeypatch):
    """'auto' picks Triton on CUDA; a kernel that cannot compile there must not stop training."""
    from types import SimpleNamespace

    from hiennu.losses import distance

    def broken(f, dim, step):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(distance, "_triton_module", lambda: SimpleNamespace(parabola_envelope=broken))
    monkeypatch.setattr(distance, "_TRITON_FAILURE", None)
    real_resolve = distance.resolve_backend
    monkeypatch.setattr(distance, "resolve_backend", lambda backend, device: "triton" if backend == "auto"
                        and distance._TRITON_FAILURE is None else real_resolve(backend, device))
    mask = np.random.default_rng(2).random((2, 4, 6, 7)) < 0.6
    mask[:, 0, 0, 0] = False
    with pytest.warns(RuntimeWarning, match="Triton"):
        out = euclidean_distance_transform(torch.from_numpy(mask))
    np.testing.assert_allclose(out.numpy(), _scipy(mask), atol=1e-4)
    assert isinstance(distance._TRITON_FAILURE, RuntimeError)
    with pytest.raises(RuntimeError, match="no kernel"):  # asked for by name: the error is not hidden
        distance._squared_edt_triton(torch.from_numpy(mask), (1.0, 1.0, 1.0), fall_back=False)
