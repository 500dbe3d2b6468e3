"""Real BONBID cases: plan + preprocess, then back to native geometry exactly (Dice 1.0 on a covering grid).

The raw dataset is built here from the official layout with hiennu.io.image (ADC -> _0000,
ZADC -> _0001, label -> uint8), independent of the converter. The default test uses a handful of
cases chosen to span the sizes, spacings and oblique directions; the slow one uses all 37.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hiennu.geometry.resampling import resample_label_to_native
from hiennu.io.bonbid_names import bonbid_role
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, read_image, read_sitk, write_image
from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from hiennu.plans import load_plans

# 128x128x23 (4 mm), 128x128x60 (oblique), 160x160x16 (oblique), 160x160x28, 128x128x50 (1.95 mm, oblique)
SUBSET = ("MGHNICU_010-VISIT_01", "MGHNICU_299-VISIT_01", "MGHNICU_438-VISIT_01", "MGHNICU_458-VISIT_01",
          "MGHNICU_331-VISIT_01")


def build_raw_from_official(src, raw_root, cases=None, name="Dataset042_REALBONBID"):
    folder = raw_root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    n = 0
    for sub, role_dir in (("1ADC_ss", "ADC"), ("2Z_ADC", "ZADC"), ("3LABEL", "label")):
        for path in sorted((src / sub).glob("*.mha")):
            role, case = bonbid_role(path)
            if cases is not None and case not in cases:
                continue
            array, geo = read_image(path, dtype=None)
            if role == "label":
                write_image((array > 0).astype(np.uint8), geo, folder / "labelsTr" / f"{case}.mha")
                n += 1
            else:
                channel = 0 if role == "ADC" else 1
                write_image(array.astype(np.float32), geo, folder / "imagesTr" / f"{case}_{channel:04d}.mha")
    save_dataset_json(DatasetJson(name="REALBONBID", num_training=n), folder)
    return folder


def _check_roundtrip(out, raw, tmp_path, config_name):
    cfg = load_plans(out).configuration(config_name)
    for props_file in sorted((out / config_name).glob("*.json")):
        props = json.loads(props_file.read_text())
        case = props["case_id"]
        seg = np.load(out / config_name / f"{case}_seg.npy")
        geo = Geometry.from_dict(props["geometry"])
        back = resample_label_to_native(seg[0], geo.size_zyx, cfg.label_interpolation)
        written = tmp_path / f"{case}.mha"
        write_image(back, geo, written)
        restored = read_sitk(written)
        source = read_sitk(raw / "imagesTr" / f"{case}_0000.mha")  # the native grid is channel 0's
        assert restored.GetSize() == source.GetSize()
        assert restored.GetSpacing() == source.GetSpacing()
        assert restored.GetOrigin() == source.GetOrigin()
        assert restored.GetDirection() == source.GetDirection()
        np.testing.assert_array_equal(read_image(written, dtype=np.uint8)[0],
                                      read_image(raw / "labelsTr" / f"{case}.mha", dtype=np.uint8)[0])
    return cfg


def test_real_cases_round_trip_exactly_on_the_covering_grid(real_bonbid_dir, hiennu_roots, tmp_path):
    raw = build_raw_from_official(real_bonbid_dir, hiennu_roots["hiennu_raw"], SUBSET)
    out = plan_and_preprocess("REALBONBID", PlanAndPreprocessOptions(num_processes=1))
    cfg = _check_roundtrip(out, raw, tmp_path, "3d_lossless")
    assert cfg.target_size_xyz == [160, 160, 64] and cfg.grid_policy == "memory"
    assert cfg.roundtrip_dice_mean == 1.0 and cfg.roundtrip_dice_worst == 1.0
    paper = load_plans(out).configuration("3d_paper")
    assert paper.roundtrip_dice_worst < 1.0  # the mean-size grid loses detail
    data = np.load(out / "3d_lossless" / f"{SUBSET[0]}.npy")
    assert data.shape == (2, 64, 160, 160) and np.isfinite(data).all()
    patch = load_plans(out).configuration("3d_fullres")
    assert patch.is_patch_based and 0.5 < patch.roundtrip_dice_mean <= 1.0  # five cases plan a coarser spacing
    fp = json.loads((out / "dataset_fingerprint.json").read_text())
    assert 1000 < fp["intensity"]["0"]["median"] < 1700  # ADC brain median in 10^-6 mm^2/s


@pytest.mark.slow
def test_all_37_dev_cases_reproduce_the_design_ceilings(real_bonbid_dir, hiennu_roots, tmp_path):
    raw = build_raw_from_official(real_bonbid_dir, hiennu_roots["hiennu_raw"])
    out = plan_and_preprocess("REALBONBID", PlanAndPreprocessOptions(num_processes=2))
    full = _check_roundtrip(out, raw, tmp_path, "3d_lossless")
    paper = load_plans(out).configuration("3d_paper")
    patch = load_plans(out).configuration("3d_fullres")
    assert patch.target_spacing_zyx == [2.0, 1.375, 1.375]  # nnU-Net v2 plans the same on these cases
    assert patch.roundtrip_dice_mean >= 0.99
    assert full.target_size_xyz == [160, 160, 64] and full.roundtrip_dice_mean == 1.0
    assert paper.target_size_xyz == [144, 144, 32]
    assert paper.roundtrip_dice_mean == pytest.approx(0.88, abs=0.01)
    assert paper.roundtrip_dice_worst == pytest.approx(0.64, abs=0.02)
    splits = json.loads((out / "splits_final.json").read_text())
    assert sorted(c for s in splits for c in s["val"]) == sorted(p.stem for p in (raw / "labelsTr").glob("*.mha"))
