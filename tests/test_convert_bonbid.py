"""hiennu_convert_bonbid: official BONBID layout -> raw dataset (fake tiny folders and the real dev cases)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hiennu.cli.convert_bonbid import main as convert_main
from hiennu.datasets.bonbid import convert_bonbid, find_bonbid_cases
from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json
from hiennu.io.image import Geometry, read_image, write_image

GEO = Geometry((7, 6, 4), (1.25, 1.25, 4.0), (-10.0, 3.5, 20.0),
               tuple(np.round([0.98, -0.19, 0.0, 0.19, 0.98, 0.0, 0.0, 0.0, 1.0], 6)))


def _fake_case(src: Path, case: str, rng, label_values=(0.0, 1.0), with_label=True):
    adc = rng.uniform(500, 3000, GEO.size_zyx).astype(np.float32)
    adc[0] = 0.0
    zadc = rng.uniform(-10, 10, GEO.size_zyx).astype(np.float32)
    write_image(adc, GEO, src / "1ADC_ss" / f"{case}-ADC_ss.mha")
    write_image(zadc, GEO, src / "2Z_ADC" / f"Zmap_{case}-ADC_smooth2mm_clipped10.mha")
    if with_label:
        label = rng.choice(np.array(label_values, dtype=np.float32), size=GEO.size_zyx)
        write_image(label, GEO, src / "3LABEL" / f"{case}_lesion.mha")


@pytest.fixture
def fake_src(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "BONBID2023_Train"
    for case in ("MGHNICU_001-VISIT_01", "MGHNICU_002-VISIT_01"):
        _fake_case(src, case, rng)
    return src


def _nothing_written(raw: Path) -> bool:
    return not any(raw.iterdir())


def test_converts_labelled_split_exactly(fake_src, hiennu_roots):
    out = convert_bonbid(fake_src, 3)
    assert out == hiennu_roots["hiennu_raw"] / "Dataset003_BONBID"
    dj = read_json(out / "dataset.json")
    assert dj["channel_names"] == {"0": "ADC", "1": "ZADC"}
    assert dj["labels"] == {"background": 0, "lesion": 1}
    assert dj["numTraining"] == 2 and dj["file_ending"] == ".mha"
    assert "Bao" in dj["reference"] and "CC BY-NC-ND" in dj["licence"]
    assert not (out / "imagesTs").exists()
    for case in find_bonbid_cases(fake_src):
        for src_file, ch in ((case.adc, 0), (case.zadc, 1)):
            a, ga = read_image(src_file, dtype=None)
            b, gb = read_image(out / "imagesTr" / f"{case.case_id}_{ch:04d}.mha", dtype=None)
            assert ga == gb and b.dtype == a.dtype
            np.testing.assert_array_equal(a, b)
        la, _ = read_image(case.label, dtype=None)
        lb, glb = read_image(out / "labelsTr" / f"{case.case_id}.mha", dtype=None)
        assert lb.dtype == np.uint8 and glb.size_xyz == GEO.size_xyz and glb.direction == GEO.direction
        np.testing.assert_array_equal(la.astype(np.uint8), lb)
    # the dataset folder is staged and renamed into place with the mode a plain mkdir gives (not tempfile's 0700)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_unlabelled_split_goes_to_imagesTs(tmp_path, hiennu_roots):
    src = tmp_path / "BONBID2023_Val"
    _fake_case(src, "MGHNICU_009-VISIT_01", np.random.default_rng(1), with_label=False)
    out = convert_bonbid(src, 4)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["MGHNICU_009-VISIT_01_0000.mha",
                                                                   "MGHNICU_009-VISIT_01_0001.mha"]
    assert list((out / "imagesTr").iterdir()) == [] and read_json(out / "dataset.json")["numTraining"] == 0


def test_non_binary_label_is_an_error_naming_the_file(tmp_path, hiennu_roots):
    src = tmp_path / "src"
    _fake_case(src, "MGHNICU_001-VISIT_01", np.random.default_rng(2), label_values=(0.0, 1.0, 2.0))
    with pytest.raises(HiennuError, match=r"MGHNICU_001-VISIT_01_lesion\.mha.*2") as e:
        convert_bonbid(src, 5)
    assert "--label-map" in str(e.value)
    assert _nothing_written(hiennu_roots["hiennu_raw"])


def test_label_mapping_converts_other_values(tmp_path, hiennu_roots):
    src = tmp_path / "src"
    _fake_case(src, "MGHNICU_001-VISIT_01", np.random.default_rng(3), label_values=(0.0, 2.0, 3.0))
    out = convert_bonbid(src, 6, label_mapping={0.0: 0, 2.0: 1, 3.0: 0})
    raw, _ = read_image(src / "3LABEL" / "MGHNICU_001-VISIT_01_lesion.mha")
    lab, _ = read_image(out / "labelsTr" / "MGHNICU_001-VISIT_01.mha", dtype=None)
    np.testing.assert_array_equal(lab, (raw == 2).astype(np.uint8))
    with pytest.raises(HiennuError, match="not in the label mapping"):
        convert_bonbid(src, 7, label_mapping={0.0: 0, 2.0: 1})


def test_refuses_to_overwrite_unless_asked(fake_src, hiennu_roots):
    out = convert_bonbid(fake_src, 3)
    marker = out / "imagesTr" / "MGHNICU_001-VISIT_01_0000.mha"
    with pytest.raises(HiennuError, match="already exists.*--overwrite"):
        convert_bonbid(fake_src, 3)
    with pytest.raises(HiennuError, match="already used by Dataset003_BONBID"):
        convert_bonbid(fake_src, 3, name="OTHER")
    assert convert_bonbid(fake_src, 3, overwrite=True) == out and marker.is_file()
    assert sorted(p.name for p in hiennu_roots["hiennu_raw"].iterdir()) == ["Dataset003_BONBID"]


def test_missing_label_in_labelled_split(fake_src, hiennu_roots):
    _fake_case(fake_src, "MGHNICU_003-VISIT_01", np.random.default_rng(4), with_label=False)
    with pytest.raises(HiennuError, match="MGHNICU_003-VISIT_01.*--allow-unlabeled"):
        convert_bonbid(fake_src, 3)
    assert _nothing_written(hiennu_roots["hiennu_raw"])
    out = convert_bonbid(fake_src, 3, allow_unlabeled=True)
    assert (out / "imagesTs" / "MGHNICU_003-VISIT_01_0001.mha").is_file()
    assert read_json(out / "dataset.json")["numTraining"] == 2


def test_missing_zadc_and_grid_mismatch_name_the_case(fake_src, hiennu_roots):
    zadc = fake_src / "2Z_ADC" / "Zmap_MGHNICU_002-VISIT_01-ADC_smooth2mm_clipped10.mha"
    zadc.unlink()
    with pytest.raises(HiennuError, match="MGHNICU_002-VISIT_01: no ZADC map in 2Z_ADC/"):
        convert_bonbid(fake_src, 3)
    shifted = Geometry(GEO.size_xyz, GEO.spacing_xyz, (0.0, 0.0, 0.0), GEO.direction)
    write_image(np.zeros(GEO.size_zyx, np.float32), shifted, zadc)
    with pytest.raises(HiennuError, match=r"Zmap_MGHNICU_002.*not on the grid.*origin"):
        convert_bonbid(fake_src, 3)
    assert _nothing_written(hiennu_roots["hiennu_raw"])


def test_cli(fake_src, hiennu_roots, capsys):
    assert convert_main([str(fake_src), "-d", "8", "--name", "B2", "-q"]) == 0
    assert (hiennu_roots["hiennu_raw"] / "Dataset008_B2" / "dataset.json").is_file()
    assert convert_main([str(fake_src), "-d", "8", "--name", "B2", "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert convert_main([str(fake_src), "-d", "9", "--label-map", "x", "-q"]) == 1
    assert convert_main([str(fake_src.parent / "nope"), "-d", "9", "-q"]) == 1


def test_real_cases_survive_exactly(real_bonbid_dir, hiennu_roots):
    out = convert_bonbid(real_bonbid_dir, 1)
    cases = find_bonbid_cases(real_bonbid_dir)
    assert len(cases) == 37 and read_json(out / "dataset.json")["numTraining"] == 37
    for case in cases:
        for src_file, dst in ((case.adc, f"imagesTr/{case.case_id}_0000.mha"),
                              (case.zadc, f"imagesTr/{case.case_id}_0001.mha"),
                              (case.label, f"labelsTr/{case.case_id}.mha")):
            a = sitk.ReadImage(str(src_file))
            b = sitk.ReadImage(str(out / dst))
            adc = sitk.ReadImage(str(case.adc))  # ZADC and label take the ADC's grid exactly (issue #12)
            assert a.GetSize() == b.GetSize()
            for attr in ("GetSpacing", "GetOrigin", "GetDirection"):
                assert getattr(adc, attr)() == getattr(b, attr)(), (dst, attr)
                np.testing.assert_allclose(getattr(a, attr)(), getattr(b, attr)(), atol=1e-4)
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
        assert sitk.ReadImage(str(out / f"labelsTr/{case.case_id}.mha")).GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize("values, expected", [
    ((0.0, 1.0, 2.0), ["0:0", "1:1", "2:1"]),
    ((0.0, 1 / 3, 1.0), ["0:0", f"{float(np.float32(1 / 3))!r}:1", "1:1"]),
    ((-1.0, 0.0, 1.0), [" -1:1", "0:0", "1:1"]),
])
def test_the_suggested_label_map_converts_when_pasted_as_it_is(tmp_path, hiennu_roots, values, expected):
    """The message once suggested --label-map 2:1 3:1, which then failed on the background value 0; then a fraction
    cut to six digits, which matched no voxel, and -1:1, which argparse reads as an option."""
    import shlex
    src = tmp_path / "src"
    _fake_case(src, "MGHNICU_001-VISIT_01", np.random.default_rng(2), label_values=values)
    with pytest.raises(HiennuError) as e:
        convert_bonbid(src, 5)
    suggested = shlex.split(str(e.value).split("e.g. --label-map ", 1)[1])
    assert suggested == expected
    assert convert_main([str(src), "-d", "5", "-q", "--label-map", *suggested]) == 0


def test_a_source_inside_the_dataset_it_would_replace_is_never_deleted(fake_src, hiennu_roots, tmp_path):
    """--overwrite of a dataset whose imagesTs/ held the release being converted deleted the release with it."""
    import shutil
    raw = hiennu_roots["hiennu_raw"]
    target = convert_bonbid(fake_src, 5, raw_root=raw)
    inside = target / "imagesTs" / "release"
    shutil.copytree(fake_src, inside)
    with pytest.raises(HiennuError, match=r"holds .*imagesTs/release, which the dataset is made from, so it is not "
                                          r"replaced"):
        convert_bonbid(inside, 5, raw_root=raw, overwrite=True)
    assert sorted(p.name for p in inside.rglob("*.mha")) == sorted(p.name for p in fake_src.rglob("*.mha"))


@pytest.mark.parametrize("breaking, message", [
    ("adc_nan", r"1ADC_ss/MGHNICU_002-VISIT_01-ADC_ss\.mha has 1 NaN and 0 infinite voxel\(s\); fix or re-export it"),
    ("zadc_inf", r"2Z_ADC/Zmap_MGHNICU_002.*has 0 NaN and 1 infinite voxel\(s\)"),
    ("adc_zero", r"1ADC_ss/MGHNICU_002-VISIT_01-ADC_ss\.mha has only zero voxels \(no brain\)"),
    ("label_nan", r"MGHNICU_002-VISIT_01_lesion\.mha: the label has 1 NaN .*which no label mapping can name"),
])
def test_damaged_voxels_are_refused_naming_the_releases_file(fake_src, hiennu_roots, breaking, message):
    """NaN, infinite and all-zero images converted without a word (the check after it named the converted copy), and
    a NaN label was offered a mapping that cannot match NaN."""
    role, kind = breaking.split("_")
    path = {"adc": fake_src / "1ADC_ss" / "MGHNICU_002-VISIT_01-ADC_ss.mha",
            "zadc": fake_src / "2Z_ADC" / "Zmap_MGHNICU_002-VISIT_01-ADC_smooth2mm_clipped10.mha",
            "label": fake_src / "3LABEL" / "MGHNICU_002-VISIT_01_lesion.mha"}[role]
    image, geometry = read_image(path)
    if kind == "zero":
        image[:] = 0
    else:
        image[1, 1, 1] = np.nan if kind == "nan" else np.inf
    write_image(image, geometry, path)
    with pytest.raises(HiennuError, match=message):
        convert_bonbid(fake_src, 6, raw_root=hiennu_roots["hiennu_raw"])
    assert _nothing_written(hiennu_roots["hiennu_raw"])


def test_a_dataset_id_taken_in_the_results_or_preprocessed_root_is_refused(fake_src, hiennu_roots):
    (hiennu_roots["hiennu_results"] / "Dataset080_Foo").mkdir(parents=True)
    with pytest.raises(HiennuError, match=r"Dataset080_BONBID has id 080, which is already used by .*Dataset080_Foo"):
        convert_bonbid(fake_src, 80, raw_root=hiennu_roots["hiennu_raw"])
    assert _nothing_written(hiennu_roots["hiennu_raw"])


def test_a_file_or_one_release_folder_given_as_the_source_says_which_folder_to_give(fake_src, hiennu_roots, caplog):
    """A file said "source folder not found"; the release's 1ADC_ss/ alone gave one "no ZADC map" line per case;
    a misnamed file was dropped without a word (hiennu_predict warns about it)."""
    import logging
    adc = fake_src / "1ADC_ss" / "MGHNICU_001-VISIT_01-ADC_ss.mha"
    with pytest.raises(HiennuError, match=rf"is a file; give the folder holding 1ADC_ss/.*e\.g\. {fake_src}$"):
        find_bonbid_cases(adc)
    with pytest.raises(HiennuError, match=rf"1ADC_ss: is the release's 1ADC_ss/ alone; give its parent {fake_src}"):
        find_bonbid_cases(fake_src / "1ADC_ss")
    (fake_src / "1ADC_ss" / "notes.mha").write_bytes(adc.read_bytes())
    monkeypatch_propagate = logging.getLogger("hiennu").propagate
    logging.getLogger("hiennu").propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="hiennu"):
            assert len(find_bonbid_cases(fake_src)) == 2
    finally:
        logging.getLogger("hiennu").propagate = monkeypatch_propagate
    assert "1 image file(s) below" in caplog.text and "are left out: " in caplog.text and "notes.mha" in caplog.text
