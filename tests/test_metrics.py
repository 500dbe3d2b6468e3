"""Per-case metrics: analytic shapes, empty-mask rules, challenge-2023 spacing, and agreement with
DeepMind's surface-distance package (optional; skipped when absent) on random and real masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from hiennu.evaluation import surface
from hiennu.evaluation.metrics import case_metrics, lesion_detection
from hiennu.masks import dice, volume_band

# the optional reference package uses scipy namespaces deprecated since scipy 1.8
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance.*")


def _ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum(((grid[i] - centre[i]) * spacing[i]) ** 2 for i in range(3))
    return d2 <= radius ** 2


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


# ---------------------------------------------------------------- surfel areas


def test_surfel_area_of_a_flat_face_is_the_face_area():
    # code with the 4 corners of one z-side set: the surface is a flat square of area sy*sx
    table = surface.surfel_area_table((2.0, 0.5, 3.0))
    code_low_z = 128 | 64 | 32 | 16
    assert table[code_low_z] == pytest.approx(0.5 * 3.0)
    code_low_x = 128 | 32 | 8 | 2
    assert table[code_low_x] == pytest.approx(2.0 * 0.5)
    assert table[0] == 0 and table[255] == 0
    # a single corner cuts a triangle with legs sqrt(2)/2 on a unit grid: area sqrt(3)/8
    assert surface.surfel_area_table((1.0, 1.0, 1.0))[1] == pytest.approx(math.sqrt(3) / 8)


def test_total_surface_area_of_a_cube_is_close_to_its_faces():
    # a 10x10x10-voxel cube's marching-cubes surface lies on the voxel-centre hull (9 mm faces), corners cut
    m = np.zeros((14, 14, 14), bool)
    m[2:12, 2:12, 2:12] = True
    sd = surface.surface_distances(m, m, (1.0, 1.0, 1.0))
    assert 6 * 9 * 9 < sd.ref_areas.sum() < 6 * 10 * 10
    assert np.all(sd.ref_to_pred == 0)


def test_neighbourhood_codes_single_voxel():
    m = np.zeros((1, 1, 1), bool)
    m[0, 0, 0] = True
    codes = surface.neighbourhood_codes(m)
    # cube (i,j,k) has corners i-1..i: the voxel is its (1,1,1) corner (bit 1) in cube (0,0,0)
    # and its (0,0,0) corner (bit 128) in cube (1,1,1)
    assert codes.shape == (2, 2, 2)
    assert codes[0, 0, 0] == 1 and codes[1, 1, 1] == 128
    assert sorted(codes.ravel().tolist()) == sorted([1, 2, 4, 8, 16, 32, 64, 128])


# ---------------------------------------------------------------- analytic shapes


def test_identical_masks_are_perfect():
    m = _ball((20, 20, 20), (10, 10, 10), 5)
    r = case_metrics(m, m, (1.0, 1.0, 1.0))
    assert r["dice"] == 1.0 and r["masd"] == 0.0 and r["nsd"] == 1.0 and r["hd95"] == 0.0
    assert r["abs_volume_diff_ml"] == 0.0 and r["lesion_recall"] == 1.0 and r["lesion_precision"] == 1.0


@pytest.mark.parametrize("voxel_mm", [1.0, 0.5])
def test_concentric_spheres_masd_is_radius_difference(voxel_mm):
    # spheres of radius 12 and 16 mm: every surface point lies 4 mm from the other surface. Surfels sit
    # on the voxel lattice, so the measured distance falls short by less than ~half a voxel and
    # converges to 4 mm as the voxels shrink.
    n = int(round(44 / voxel_mm))
    spacing = (voxel_mm,) * 3
    centre = (n / 2,) * 3
    ref = _ball((n, n, n), centre, 12.0, spacing)
    pred = _ball((n, n, n), centre, 16.0, spacing)
    r = case_metrics(ref, pred, spacing)
    for key in ("masd", "asd_ref_to_pred", "asd_pred_to_ref"):
        assert 0 < 4.0 - r[key] < 0.65 * voxel_mm, key
    assert r["nsd"] == 0.0  # nothing lies within 2 mm
    assert 4.0 <= r["hd95"] < 4.0 + 0.3 * voxel_mm
    assert r["dice"] == pytest.approx(2 * 12 ** 3 / (12 ** 3 + 16 ** 3), abs=0.02)


def test_concentric_spheres_anisotropic_spacing():
    # same spheres in mm on a (2, 1, 1) mm grid
    spacing = (2.0, 1.0, 1.0)
    shape = (24, 44, 44)
    ref = _ball(shape, (12, 22, 22), 12.0, spacing)
    pred = _ball(shape, (12, 22, 22), 16.0, spacing)
    r = case_metrics(ref, pred, spacing)
    assert 0 < 4.0 - r["masd"] < 0.6 * 2.0


def test_shifted_cube_distances():
    # a cube shifted by 3 voxels along x (spacing 2 mm): the two x faces are 6 mm from the other surface
    spacing = (1.0, 1.0, 2.0)
    shape = (20, 20, 24)
    ref = _box(shape, (5, 5, 5), (15, 15, 15))
    pred = _box(shape, (5, 5, 8), (15, 15, 18))
    r = case_metrics(ref, pred, spacing)
    assert r["dice"] == pytest.approx(2 * 7 / 20)
    assert r["hd95"] == pytest.approx(6.0)
    # nothing is farther than the shift; the shifted faces are exactly 6 mm away
    sd = surface.surface_distances(ref, pred, spacing)
    assert sd.ref_to_pred.max() == pytest.approx(6.0)
    assert 0 < r["masd"] < 6.0
    assert r["ref_volume_ml"] == pytest.approx(1000 * 2 / 1000)
    assert r["abs_volume_diff_ml"] == 0.0


def test_dice_and_volume_by_hand():
    ref = np.zeros((4, 4, 4), bool)
    pred = np.zeros((4, 4, 4), bool)
    ref[0, 0, :3] = True
    pred[0, 0, 1:] = True
    assert dice(ref, pred) == pytest.approx(2 * 2 / 6)
    r = case_metrics(ref, pred, (2.0, 1.0, 0.5))
    assert r["ref_volume_ml"] == pytest.approx(3 * 1.0 / 1000)


# ---------------------------------------------------------------- empty-mask rules


def test_both_empty():
    z = np.zeros((6, 6, 6), bool)
    r = case_metrics(z, z, (1.0, 1.0, 1.0))
    assert (r["dice"], r["masd"], r["nsd"], r["hd95"]) == (1.0, 0.0, 1.0, 0.0)
    assert math.isnan(r["lesion_recall"]) and math.isnan(r["lesion_precision"])


@pytest.mark.parametrize("which", ["ref", "pred"])
def test_exactly_one_empty(which):
    m = _box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    z = np.zeros_like(m)
    ref, pred = (z, m) if which == "ref" else (m, z)
    r = case_metrics(ref, pred, (1.0, 1.0, 1.0))
    assert r["dice"] == 0.0 and r["nsd"] == 0.0
    assert math.isnan(r["masd"]) and math.isnan(r["hd95"])


# ---------------------------------------------------------------- challenge 2023 mode


def test_challenge_2023_differs_on_anisotropic_spacing_only():
    ref = _box((16, 16, 16), (4, 4, 4), (10, 10, 10))
    pred = _box((16, 16, 16), (5, 4, 4), (11, 10, 12))
    aniso = (3.0, 0.8, 0.8)
    correct = case_metrics(ref, pred, aniso)
    challenge = case_metrics(ref, pred, aniso, challenge_2023=True)
    assert challenge["challenge_2023"] and not correct["challenge_2023"]
    assert challenge["masd"] != pytest.approx(correct["masd"])
    assert challenge["dice"] == correct["dice"]
    assert challenge["ref_volume_ml"] == correct["ref_volume_ml"]
    # challenge mode equals the correct metric with the spacing reversed
    assert challenge["masd"] == pytest.approx(case_metrics(ref, pred, aniso[::-1])["masd"])
    iso = (1.1, 1.1, 1.1)
    assert case_metrics(ref, pred, iso, challenge_2023=True)["masd"] == case_metrics(ref, pred, iso)["masd"]


# ---------------------------------------------------------------- detection and bands


def test_lesion_detection_26_connected():
    ref = np.zeros((10, 10, 10), bool)
    ref[1, 1, 1] = ref[2, 2, 2] = True          # diagonal neighbours: one 26-connected lesion
    ref[7, 7, 7] = True                          # second lesion, missed
    pred = np.zeros_like(ref)
    pred[2, 2, 2] = True                         # hits lesion 1
    pred[5, 0, 9] = True                         # false positive
    d = lesion_detection(ref, pred)
    assert d["ref_lesions"] == 2 and d["pred_lesions"] == 2
    assert d["lesion_recall"] == 0.5 and d["lesion_precision"] == 0.5


def test_volume_bands():
    assert volume_band(0.0) == "no lesion"
    assert volume_band(0.005) == "<1%"
    assert volume_band(0.01) == "1-5%"
    assert volume_band(0.049) == "1-5%"
    assert volume_band(0.5) == ">5%"
    assert volume_band(float("nan")) is None
    m = _box((10, 10, 10), (0, 0, 0), (2, 2, 2))
    assert case_metrics(m, m, (1, 1, 1), brain_voxels=100)["band"] == ">5%"
    r = case_metrics(m, m, (1, 1, 1))
    assert r["band"] is None and math.isnan(r["lesion_fraction"])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 0, 1))


# ---------------------------------------------------------------- agreement with surface-distance


def _reference_package():
    sd = pytest.importorskip("surface_distance", reason="optional test extra: pip install surface-distance")
    if not hasattr(np, "Inf"):  # the package still uses np.Inf, removed in numpy 2
        np.Inf = np.inf
    return sd


def _assert_agree(sdp, ref, pred, spacing):
    d = sdp.compute_surface_distances(ref, pred, spacing)
    r = case_metrics(ref, pred, spacing)
    to_pred, to_ref = sdp.compute_average_surface_distance(d)
    assert r["masd"] == pytest.approx((to_pred + to_ref) / 2, abs=1e-6)
    assert r["nsd"] == pytest.approx(sdp.compute_surface_dice_at_tolerance(d, 2.0), abs=1e-6)
    assert r["hd95"] == pytest.approx(sdp.compute_robust_hausdorff(d, 95), abs=1e-6)
    assert r["dice"] == pytest.approx(sdp.compute_dice_coefficient(ref, pred), abs=1e-12)


def test_matches_surface_distance_on_random_masks():
    sdp = _reference_package()
    rng = np.random.default_rng(7)
    tested = 0
    while tested < 25:
        shape = tuple(int(s) for s in rng.integers(4, 28, 3))
        ref = ndimage.binary_dilation(rng.random(shape) > 0.96, iterations=int(rng.integers(0, 3)))
        pred = ndimage.binary_dilation(rng.random(shape) > 0.96, iterations=int(rng.integers(0, 3)))
        if not ref.any() or not pred.any():
            continue
        _assert_agree(sdp, ref, pred, tuple(float(s) for s in rng.uniform(0.4, 3.5, 3)))
        tested += 1


def test_surfel_area_table_matches_surface_distance():
    sdp = _reference_package()
    from surface_distance import lookup_tables
    for spacing in [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9), (5.0, 0.8, 0.8)]:
        np.testing.assert_allclose(surface.surfel_area_table(spacing),
                                   lookup_tables.create_table_neighbour_code_to_surface_area(spacing),
                                   rtol=0, atol=1e-12)
    assert sdp is not None


def test_matches_surface_distance_on_real_labels(real_bonbid_dir):
    sdp = _reference_package()
    from hiennu.io.image import read_image
    rng = np.random.default_rng(3)
    labels = sorted((real_bonbid_dir / "3LABEL").glob("*.mha"))
    tested = 0
    for path in labels:
        ref, geometry = read_image(path)
        ref = ref != 0
        if not ref.any():
            continue
        pred = ndimage.binary_dilation(ref, iterations=1) if tested % 2 else ndimage.binary_erosion(ref)
        pred = np.roll(pred, int(rng.integers(-2, 3)), axis=2)
        pred ^= rng.random(ref.shape) > 0.9995
        _assert_agree(sdp, ref, pred, geometry.spacing_zyx)
        tested += 1
        if tested == 4:
            break
    assert tested > 0
