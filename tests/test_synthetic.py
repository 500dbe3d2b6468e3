"""Synthetic BONBID-like generator: determinism, value ranges, lesion mix, ZADC baseline, written dataset."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hiennu.cli.make_synthetic import main as synthetic_main
from hiennu.datasets.integrity import check_raw_dataset
from hiennu.datasets.synthetic import (LESION_CATEGORIES, LESION_SCHEDULE, PRESETS, case_ids, generate_case,
                                       lesion_category, make_synthetic_dataset)
from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json
from hiennu.io.image import read_image


def _case(index: int, seed: int = 0, preset: str = "small"):
    return generate_case(f"SYN_{index:03d}", np.random.default_rng([seed, index]), PRESETS[preset],
                         lesion_category(seed, index))


@pytest.fixture(scope="module")
def small_cases():
    return [_case(i) for i in range(PRESETS["small"].num_cases)]


def test_deterministic_per_seed():
    a, b, c = _case(3, seed=5), _case(3, seed=5), _case(3, seed=6)
    np.testing.assert_array_equal(a.adc, b.adc)
    np.testing.assert_array_equal(a.zadc, b.zadc)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.geometry == b.geometry
    assert a.geometry != c.geometry or not np.array_equal(a.adc, c.adc)


def test_value_model(small_cases):
    for case in small_cases:
        assert case.adc.shape == case.geometry.size_zyx == case.zadc.shape == case.label.shape
        assert case.adc.dtype == np.float32 and case.zadc.dtype == np.float32 and case.label.dtype == np.uint8
        brain = case.adc != 0
        assert 0.05 < brain.mean() < 0.6
        assert np.all(case.zadc[~brain] == 0) and np.all(case.label[~brain] == 0)
        assert case.zadc.min() >= -10 and case.zadc.max() <= 10
        assert set(np.unique(case.label)) <= {0, 1}
        assert 1100 < np.median(case.adc[brain]) < 1600 or case.lesion_category in ("large", "massive")
        assert np.percentile(case.adc[brain], 99.5) > 2300  # CSF
        assert np.all(np.isfinite(case.adc)) and np.all(np.isfinite(case.zadc))
    assert any((c.adc < 0).any() for c in small_cases)  # noisy skull-stripping rim


def test_lesions_lower_adc_and_zadc(small_cases):
    for case in small_cases:
        lesion, brain = case.label > 0, case.adc != 0
        if lesion.sum() >= 20:
            assert np.median(case.zadc[lesion]) < np.median(case.zadc[brain & ~lesion]) - 1.5
            assert np.median(case.zadc[lesion]) < -1.0


def test_grids_vary_within_preset(small_cases):
    spec = PRESETS["small"]
    sizes = {c.geometry.size_xyz for c in small_cases}
    assert len(sizes) > 5
    for c in small_cases:
        nx, ny, nz = c.geometry.size_xyz
        assert nx == ny and nx in spec.inplane_sizes and spec.slice_range[0] <= nz <= spec.slice_range[1]
        fov = nx * c.geometry.spacing_xyz[0]
        assert spec.inplane_fov_mm[0] - 5 <= fov <= spec.inplane_fov_mm[1] + 5
        d = np.array(c.geometry.direction).reshape(3, 3)
        np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-6)
    assert sum(not np.allclose(c.geometry.direction, np.eye(3).ravel()) for c in small_cases) >= 8


def test_lesion_mix_matches_schedule(small_cases):
    assert Counter(lesion_category(0, i) for i in range(20)) == Counter(LESION_SCHEDULE)
    assert [lesion_category(0, i) for i in range(20)] != [lesion_category(1, i) for i in range(20)]
    for case in small_cases:
        fraction = case.label.sum() / (case.adc != 0).sum()
        lo, hi = LESION_CATEGORIES[case.lesion_category][0]
        if case.lesion_category == "none":
            assert fraction == 0
        elif case.lesion_category == "tiny":
            assert 0 < fraction < 0.015  # the 6-voxel minimum can lift the tiniest ones
        else:
            assert lo * 0.95 <= fraction <= hi * 1.05


def test_zadc_baseline_is_imperfect_like_real(small_cases):
    """The challenge baseline ZADC < -2 scores near the real 0.466 mean Dice: neither trivial nor useless."""
    dices, false_pos, missed = [], 0, 0
    for case in small_cases:
        pred, lesion = case.zadc < -2, case.label > 0
        denom = pred.sum() + lesion.sum()
        dices.append(1.0 if denom == 0 else 2 * (pred & lesion).sum() / denom)
        false_pos += (pred & ~lesion).sum()
        missed += (~pred & lesion).sum()
    assert 0.3 < np.mean(dices) < 0.65
    assert false_pos > 100 and missed > 100  # confounders on both sides of the threshold


def test_writes_a_clean_raw_dataset(hiennu_roots):
    out = make_synthetic_dataset(12, num_cases=3, seed=2)
    assert out == hiennu_roots["hiennu_raw"] / "Dataset012_SYNTHETIC"
    assert check_raw_dataset(out) == []
    dj = read_json(out / "dataset.json")
    assert dj["numTraining"] == 3 and dj["channel_names"] == {"0": "ADC", "1": "ZADC"}
    adc, geo = read_image(out / "imagesTr" / "SYN_001_0000.mha")
    ref = _case(1, seed=2)
    np.testing.assert_array_equal(adc, ref.adc)
    assert geo.size_xyz == ref.geometry.size_xyz and np.allclose(geo.direction, ref.geometry.direction)
    label, _ = read_image(out / "labelsTr" / "SYN_001.mha", dtype=None)
    assert label.dtype == np.uint8
    with pytest.raises(HiennuError, match="already exists"):
        make_synthetic_dataset(12, num_cases=3, seed=2)
    with pytest.raises(HiennuError, match="unknown synthetic preset"):
        make_synthetic_dataset(13, preset="huge")
    assert sorted(p.name for p in hiennu_roots["hiennu_raw"].iterdir()) == ["Dataset012_SYNTHETIC"]


def test_cli(tmp_path, hiennu_roots):
    assert synthetic_main(["--cases", "2", "--seed", "1", "-q"]) == 0
    assert (hiennu_roots["hiennu_raw"] / "Dataset999_SYNTHETIC" / "labelsTr" / "SYN_001.mha").is_file()
    assert synthetic_main(["-o", str(tmp_path / "elsewhere"), "--cases", "1", "-q"]) == 0
    assert (tmp_path / "elsewhere" / "imagesTr" / "SYN_000_0001.mha").is_file()
    assert synthetic_main(["--cases", "0", "-d", "5", "-q"]) == 1
    assert case_ids(2) == ["SYN_000", "SYN_001"]


def test_bonbid_preset_has_real_sizes():
    case = _case(0, preset="bonbid")
    nx, ny, nz = case.geometry.size_xyz
    assert nx == ny and nx in (128, 160) and 16 <= nz <= 60
