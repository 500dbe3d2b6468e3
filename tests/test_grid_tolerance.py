"""Issue #12 §1 and §3 (input side): one "same grid" tolerance everywhere, bad headers and voxels refused.

Every test builds tiny images; the real MGHNICU_336 offsets (about 0.001 mm in origin, 1e-6 in the
direction cosines) are reproduced synthetically.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hiennu.datasets.bonbid import convert_bonbid
from hiennu.datasets.integrity import check_raw_dataset
from hiennu.errors import HiennuError, ImageReadError
from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.inference.baseline import ZadcThresholdBaseline, make_baseline
from hiennu.inference.layouts import CaseInputError, discover_input_cases, read_case
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, grid_differences, read_image, same_grid, write_image

DIRECTION = tuple(np.round([0.98, -0.19, 0.0, 0.19, 0.98, 0.0, 0.0, 0.0, 1.0], 6))
GEO = Geometry((8, 7, 4), (0.75, 0.75, 3.0), (-128.6, -122.5, -37.0), DIRECTION)


def _nudged(geo: Geometry, origin_mm: float = 1e-3, direction: float = 1e-6) -> Geometry:
    """``geo`` with the origin moved by ``origin_mm`` along x and one cosine changed by ``direction``."""
    d = list(geo.direction)
    d[1] += direction
    return Geometry(geo.size_xyz, geo.spacing_xyz, (geo.origin_xyz[0] + origin_mm, *geo.origin_xyz[1:]),
                    tuple(d), geo.pixel_type)


# ------------------------------------------------------------------------------------ the rule itself

@pytest.mark.parametrize("offset_mm", [1e-3, 1.5e-3, -2e-3])
def test_off_by_a_thousandth_of_a_mm_is_the_same_grid(offset_mm):
    assert same_grid(GEO, _nudged(GEO, offset_mm, 1e-6))
    assert grid_differences(GEO, _nudged(GEO, offset_mm, 1e-6)) == []


def test_off_by_half_a_voxel_is_refused_with_digits_and_difference():
    half = _nudged(GEO, origin_mm=0.5 * 0.75, direction=0.0)
    diffs = grid_differences(GEO, half)
    assert len(diffs) == 1 and diffs[0].startswith("origin")
    assert "-128.6" in diffs[0] and "-128.225" in diffs[0]  # both values, enough digits to differ
    assert "0.375 mm apart" in diffs[0] and "tolerance" in diffs[0]


def test_small_origin_difference_is_printed_visibly():
    """The old message printed -128.6 for both; a refused 0.02 mm offset must show it."""
    diffs = grid_differences(GEO, _nudged(GEO, origin_mm=0.02, direction=0.0))
    assert "-128.58" in diffs[0] and "0.02 mm apart" in diffs[0]


def test_direction_tolerance_is_about_1e_4():
    assert same_grid(GEO, _nudged(GEO, 0.0, 5e-5))
    diffs = grid_differences(GEO, _nudged(GEO, 0.0, 1e-3))
    assert len(diffs) == 1 and "direction" in diffs[0] and "0.001" in diffs[0]


# ------------------------------------------------------------------------- used by every stage

def _bonbid_case(src: Path, case: str, zadc_geo: Geometry, label_geo: Geometry) -> None:
    rng = np.random.default_rng(1)
    write_image(rng.uniform(500, 3000, GEO.size_zyx).astype(np.float32), GEO, src / "1ADC_ss" / f"{case}-ADC_ss.mha")
    write_image(rng.uniform(-10, 10, GEO.size_zyx).astype(np.float32), zadc_geo,
                src / "2Z_ADC" / f"Zmap_{case}-ADC_smooth2mm_clipped10.mha")
    label = np.zeros(GEO.size_zyx, np.float32)
    label[1:3, 2:5, 2:5] = 1
    write_image(label, label_geo, src / "3LABEL" / f"{case}_lesion.mha")


def test_converter_accepts_the_mghnicu_336_offsets_and_snaps_to_the_adc(tmp_path, hiennu_roots):
    src = tmp_path / "release"
    _bonbid_case(src, "MGHNICU_336-VISIT_01", _nudged(GEO, 1.2e-3, 1e-6), _nudged(GEO, -1e-3, 2e-6))
    _bonbid_case(src, "MGHNICU_337-VISIT_01", GEO, GEO)
    out = convert_bonbid(src, 5)
    adc = sitk.ReadImage(str(out / "imagesTr" / "MGHNICU_336-VISIT_01_0000.mha"))
    for path in (out / "imagesTr" / "MGHNICU_336-VISIT_01_0001.mha", out / "labelsTr" / "MGHNICU_336-VISIT_01.mha"):
        img = sitk.ReadImage(str(path))
        assert img.GetOrigin() == adc.GetOrigin() and img.GetDirection() == adc.GetDirection()
        assert img.GetSpacing() == adc.GetSpacing()
    assert check_raw_dataset(out) == []


def test_converter_refuses_half_a_voxel(tmp_path, hiennu_roots):
    src = tmp_path / "release"
    _bonbid_case(src, "MGHNICU_336-VISIT_01", _nudged(GEO, 0.375, 0.0), GEO)
    with pytest.raises(HiennuError, match=r"MGHNICU_336.*not on the grid.*0\.375 mm apart"):
        convert_bonbid(src, 5)


def test_integrity_check_uses_the_same_tolerance(tmp_path):
    root = tmp_path / "Dataset011_T"
    rng = np.random.default_rng(0)
    write_image(rng.uniform(500, 3000, GEO.size_zyx).astype(np.float32), GEO, root / "imagesTr" / "c_0000.mha")
    write_image(rng.uniform(-9, 9, GEO.size_zyx).astype(np.float32), _nudged(GEO), root / "imagesTr" / "c_0001.mha")
    write_image(np.zeros(GEO.size_zyx, np.uint8), _nudged(GEO, -1e-3), root / "labelsTr" / "c.mha")
    save_dataset_json(DatasetJson(name="T", num_training=1), root / "dataset.json")
    assert check_raw_dataset(root) == []
    write_image(np.zeros(GEO.size_zyx, np.uint8), _nudged(GEO, 0.375, 0.0), root / "labelsTr" / "c.mha")
    problems = check_raw_dataset(root)
    assert len(problems) == 1 and "0.375 mm apart" in problems[0]


def test_prediction_takes_the_adc_geometry_exactly(tmp_path):
    adc = np.full(GEO.size_zyx, 1300, np.float32)
    zadc = np.zeros(GEO.size_zyx, np.float32)
    zadc[1:3, 2:4, 2:4] = -5
    write_image(adc, GEO, tmp_path / "in" / "c_0000.mha")
    write_image(zadc, _nudged(GEO), tmp_path / "in" / "c_0001.mha")
    (case,) = discover_input_cases(tmp_path / "in", ("ADC", "ZADC"))
    _, geometry = read_case(case)
    assert geometry == Geometry.from_image(sitk.ReadImage(str(tmp_path / "in" / "c_0000.mha")))
    report = make_baseline("zadc").predict_folder(tmp_path / "in", tmp_path / "out")
    assert report.ok
    out = sitk.ReadImage(str(tmp_path / "out" / "c.mha"))
    ref = sitk.ReadImage(str(tmp_path / "in" / "c_0000.mha"))
    assert out.GetOrigin() == ref.GetOrigin() and out.GetDirection() == ref.GetDirection()


def test_predict_files_hands_adc_and_zadc_to_the_model_in_its_own_channel_order():
    """A dataset.json may list ZADC first: predict_files(adc, zadc) still gives each map to its channel (the rule
    ZADC < -2 finds the 27-voxel lesion both ways; handed over in the wrong order it found none)."""
    adc = np.full((8, 9, 10), 1300.0, np.float32)
    zadc = np.zeros((8, 9, 10), np.float32)
    zadc[2:5, 2:5, 2:5] = -3.0
    images = (sitk.GetImageFromArray(adc), sitk.GetImageFromArray(zadc))
    for names in (("ADC", "ZADC"), ("ZADC", "ADC")):
        mask = sitk.GetArrayFromImage(ZadcThresholdBaseline(channel_names=names).predict_files(*images))
        assert int(mask.sum()) == 27, names


def test_evaluation_accepts_a_prediction_on_the_zadc_grid(tmp_path):
    label = np.zeros(GEO.size_zyx, np.uint8)
    label[1:3, 2:5, 2:5] = 1
    write_image(label, GEO, tmp_path / "ref" / "c.mha")
    write_image(label, _nudged(GEO, 1e-3, 1e-6), tmp_path / "pred" / "c.mha")
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred", num_processes=1)
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(1.0)
    write_image(label, _nudged(GEO, 0.375, 0.0), tmp_path / "pred" / "c.mha")
    with pytest.raises(HiennuError, match="0.375 mm apart"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", num_processes=1)


# ----------------------------------------------------------------------------- §3: bad headers

def _mha_with_spacing(path: Path, spacing_text: bytes) -> Path:
    img = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
    img.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(img, str(path), False)
    data = path.read_bytes().replace(b"ElementSpacing = 2 2 3", b"ElementSpacing = " + spacing_text)
    path.write_bytes(data)
    return path


def _nii_with_spacing(path: Path, x_spacing: float) -> Path:
    img = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
    img.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(img, str(path))
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())
    data[80:84] = struct.pack("<f", x_spacing)
    with opener(path, "wb") as f:
        f.write(bytes(data))
    return path


@pytest.mark.parametrize("text", [b"-2 2 3", b"1000000 2 3"])
def test_negative_or_absurd_metaimage_spacing_is_refused(tmp_path, text):
    path = _mha_with_spacing(tmp_path / "bad.mha", text)
    with pytest.raises(ImageReadError, match=r"bad\.mha: voxel spacing .* not usable"):
        read_image(path)


@pytest.mark.parametrize("name, value", [("neg.nii", -2.0), ("neg.nii.gz", -2.0), ("big.nii.gz", 1e6)])
def test_negative_or_absurd_nifti_spacing_is_refused(tmp_path, name, value):
    path = _nii_with_spacing(tmp_path / name, value)
    with pytest.raises(ImageReadError, match=rf"{name}: voxel spacing .* not usable"):
        read_image(path)


def test_integrity_check_names_a_negative_spacing(tmp_path):
    root = tmp_path / "Dataset012_T"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    geo = Geometry((6, 5, 4), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    _mha_with_spacing(root / "imagesTr" / "c_0000.mha", b"-2 2 3")
    write_image(rng.uniform(-9, 9, geo.size_zyx).astype(np.float32), geo, root / "imagesTr" / "c_0001.mha")
    write_image(np.zeros(geo.size_zyx, np.uint8), geo, root / "labelsTr" / "c.mha")
    save_dataset_json(DatasetJson(name="T", num_training=1), root / "dataset.json")
    problems = check_raw_dataset(root)
    assert any("c_0000.mha: voxel spacing (-2, 2, 3)" in p for p in problems), problems


def test_truncated_image_is_not_reported_as_missing(tmp_path):
    path = tmp_path / "t.mha"
    write_image(np.ones((4, 5, 6), np.float32), GEO.__class__((6, 5, 4), (1, 1, 1), (0, 0, 0),
                                                              (1, 0, 0, 0, 1, 0, 0, 0, 1)), path, compress=False)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "does not exist" not in str(info.value) and "No such file" not in str(info.value)
    assert "truncated" in str(info.value)


def test_a_corrupt_gzip_stream_skips_its_case_and_predicts_the_others(tmp_path):
    """A .nii.gz whose deflate data is damaged (one byte flipped) is one unreadable case, named, not a crash of the
    whole folder (zlib's error is neither an OSError nor a ValueError)."""
    for case in ("a", "b", "c"):
        write_image(np.full(GEO.size_zyx, 1300, np.float32), GEO, tmp_path / "in" / f"{case}_0000.nii.gz")
        write_image(np.full(GEO.size_zyx, -5, np.float32), GEO, tmp_path / "in" / f"{case}_0001.nii.gz")
    damaged = tmp_path / "in" / "b_0001.nii.gz"
    data = bytearray(damaged.read_bytes())
    data[11] ^= 0xA5
    damaged.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"b_0001\.nii\.gz: its compressed voxel data is corrupt"):
        read_image(damaged)
    report = make_baseline("zadc").predict_folder(tmp_path / "in", tmp_path / "out")
    assert report.predicted == ["a", "c"] and "b" in report.skipped
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "c.nii.gz"]


def _flip_mid_stream(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset + (len(data) - offset) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("ending", [".mha", ".nii.gz"])
def test_a_flipped_bit_in_compressed_voxels_is_refused_not_decoded_to_other_voxels(tmp_path, ending):
    """SimpleITK inflates a damaged stream without checking its checksum, into other voxels; the reader, the
    integrity check and the converter's reads refuse it instead, naming the file."""
    from hiennu.datasets.integrity import check_raw_dataset
    from hiennu.io.image import compressed_data_problem
    rng = np.random.default_rng(0)
    label = (rng.uniform(size=GEO.size_zyx) < 0.3).astype(np.uint8)
    path = tmp_path / f"lab{ending}"
    write_image(label, GEO, path)
    assert compressed_data_problem(path) is None and np.array_equal(read_image(path, dtype=np.uint8)[0], label)
    offset = path.read_bytes().index(b"ElementDataFile = LOCAL\n") + 24 if ending == ".mha" else 20
    _flip_mid_stream(path, offset)
    if ending == ".mha":   # what SimpleITK alone makes of it: other voxels, no error
        assert not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), label)
    with pytest.raises(ImageReadError, match=rf"lab{re.escape(ending)}: its compressed voxel data is corrupt"):
        read_image(path)
    root = tmp_path / "Dataset014_T"
    write_image(np.full(GEO.size_zyx, 1300, np.float32), GEO, root / "imagesTr" / "c_0000.mha")
    write_image(np.random.default_rng(1).uniform(-3, 3, GEO.size_zyx).astype(np.float32), GEO,
                root / "imagesTr" / "c_0001.mha")
    (root / "labelsTr").mkdir(parents=True)
    (root / "labelsTr" / "c.mha").write_bytes((tmp_path / "lab.mha").read_bytes() if ending == ".mha" else b"")
    save_dataset_json(DatasetJson(name="T", num_training=1), root / "dataset.json")
    if ending == ".mha":
        problems = check_raw_dataset(root)
        assert len(problems) == 1 and "c.mha: its compressed voxel data is corrupt" in problems[0], problems


def test_a_compressed_metaimage_cut_short_or_of_the_wrong_length_is_refused(tmp_path):
    from hiennu.io.image import compressed_data_problem
    path = tmp_path / "a.mha"
    write_image(np.arange(np.prod(GEO.size_zyx), dtype=np.float32).reshape(GEO.size_zyx), GEO, path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-20])
    assert "ends early" in compressed_data_problem(path)
    head, _, body = whole.partition(b"ElementDataFile = LOCAL\n")
    size = head.split(b"DimSize = ")[1].split(b"\n")[0]
    path.write_bytes(head.replace(b"DimSize = " + size, b"DimSize = 4 4 4") + b"ElementDataFile = LOCAL\n" + body)
    assert re.fullmatch(r"it inflates to \d+ bytes, its header says 256", compressed_data_problem(path))


def test_what_simpleitk_reads_whole_is_not_called_corrupt(tmp_path):
    """The checksum pass lets through what SimpleITK reads correctly: an uncompressed NIfTI named .nii.gz, bytes
    after a .nii.gz's gzip stream, and a MetaImage whose data is gzip- rather than zlib-wrapped."""
    import gzip as gz
    import shutil
    from hiennu.io.image import compressed_data_problem
    a = (np.random.default_rng(0).random((4, 5, 6)) * 100).astype(np.float32)
    image = sitk.GetImageFromArray(a)
    sitk.WriteImage(image, str(tmp_path / "plain.nii"), False)
    shutil.copy(tmp_path / "plain.nii", tmp_path / "misnamed.nii.gz")
    sitk.WriteImage(image, str(tmp_path / "t.nii.gz"), True)
    (tmp_path / "tail.nii.gz").write_bytes((tmp_path / "t.nii.gz").read_bytes() + b"JUNKJUNK")
    sitk.WriteImage(image, str(tmp_path / "a.mha"), True)
    whole = (tmp_path / "a.mha").read_bytes()
    head = whole[: whole.index(b"\n", whole.index(b"ElementDataFile")) + 1]
    body = gz.compress(a.tobytes())
    head = b"\n".join(line if not line.startswith(b"CompressedDataSize") else b"CompressedDataSize = %d" % len(body)
                      for line in head.split(b"\n"))
    (tmp_path / "g.mha").write_bytes(head + body)
    for name in ("misnamed.nii.gz", "tail.nii.gz", "g.mha"):
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name))), a), name
        assert compressed_data_problem(tmp_path / name) is None, name
        assert np.array_equal(read_image(tmp_path / name)[0], a), name


def test_every_gzip_member_of_a_nii_gz_is_checked(tmp_path):
    """A .nii.gz may hold several gzip members back to back (bgzip, concatenation), and readers take them all: a
    damaged second member is refused like a damaged first one; whole, they read as one image."""
    import gzip as gz
    from hiennu.io.image import compressed_data_problem
    a = (np.arange(8 * 9 * 10) % 97).astype(np.float32).reshape(8, 9, 10)
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "plain.nii"), False)
    raw = (tmp_path / "plain.nii").read_bytes()
    first, second = gz.compress(raw[: len(raw) // 2], compresslevel=0), bytearray(gz.compress(raw[len(raw) // 2:],
                                                                                              compresslevel=0))
    (tmp_path / "two.nii.gz").write_bytes(first + bytes(second))
    assert compressed_data_problem(tmp_path / "two.nii.gz") is None
    assert np.array_equal(read_image(tmp_path / "two.nii.gz")[0], a)
    second[len(second) // 2] ^= 0x40   # stored data: only the CRC-32 can tell
    (tmp_path / "two_bad.nii.gz").write_bytes(first + bytes(second))
    with pytest.raises(ImageReadError, match=r"two_bad\.nii\.gz: its compressed voxel data is corrupt"):
        read_image(tmp_path / "two_bad.nii.gz")


def test_a_broken_link_in_a_dataset_is_one_problem_naming_the_case(tmp_path):
    from hiennu.datasets.integrity import check_raw_dataset
    root = tmp_path / "Dataset015_T"
    write_image(np.full(GEO.size_zyx, 1300, np.float32), GEO, root / "imagesTr" / "c_0000.mha")
    write_image(np.random.default_rng(1).uniform(-3, 3, GEO.size_zyx).astype(np.float32), GEO,
                root / "imagesTr" / "c_0001.mha")
    (root / "labelsTr").mkdir(parents=True)
    (root / "labelsTr" / "c.mha").symlink_to(tmp_path / "gone.mha")
    save_dataset_json(DatasetJson(name="T", num_training=1), root / "dataset.json")
    problems = check_raw_dataset(root)
    assert problems == [f"case c: {root / 'labelsTr' / 'c.mha'} not found (a broken link?); re-copy the file"]


# ----------------------------------------------------------------------------- §3: bad voxels

def test_all_zero_image_in_a_labelled_case_fails_the_integrity_check(tmp_path):
    root = tmp_path / "Dataset013_T"
    rng = np.random.default_rng(0)
    write_image(np.zeros(GEO.size_zyx, np.float32), GEO, root / "imagesTr" / "c_0000.mha")
    write_image(rng.uniform(-9, 9, GEO.size_zyx).astype(np.float32), GEO, root / "imagesTr" / "c_0001.mha")
    write_image(np.zeros(GEO.size_zyx, np.uint8), GEO, root / "labelsTr" / "c.mha")
    save_dataset_json(DatasetJson(name="T", num_training=1), root / "dataset.json")
    problems = check_raw_dataset(root)
    assert len(problems) == 1 and "c_0000.mha is all zero" in problems[0]


def test_nan_input_is_refused_by_name_not_predicted_empty(tmp_path):
    nan = np.full(GEO.size_zyx, np.nan, np.float32)
    write_image(nan, GEO, tmp_path / "in" / "bad_0000.mha")
    write_image(nan, GEO, tmp_path / "in" / "bad_0001.mha")
    write_image(np.full(GEO.size_zyx, 1300, np.float32), GEO, tmp_path / "in" / "good_0000.mha")
    write_image(np.zeros(GEO.size_zyx, np.float32), GEO, tmp_path / "in" / "good_0001.mha")
    cases = {c.case_id: c for c in discover_input_cases(tmp_path / "in", ("ADC", "ZADC"))}
    with pytest.raises(CaseInputError, match=r"case bad: .*bad_0000.mha has 224 NaN"):
        read_case(cases["bad"])
    report = make_baseline("zadc").predict_folder(tmp_path / "in", tmp_path / "out")
    assert report.predicted == ["good"] and "bad" in report.skipped
    assert not (tmp_path / "out" / "bad.mha").exists()
    with pytest.raises(HiennuError, match="NaN"):
        make_baseline("zadc").predict_case([nan, nan], GEO)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_continue_prediction_redoes_damaged_outputs(tmp_path, damage):
    write_image(np.full(GEO.size_zyx, 1300, np.float32), GEO, tmp_path / "in" / "c_0000.mha")
    write_image(np.full(GEO.size_zyx, -5, np.float32), GEO, tmp_path / "in" / "c_0001.mha")
    predictor = make_baseline("zadc")
    predictor.predict_folder(tmp_path / "in", tmp_path / "out")
    out = tmp_path / "out" / "c.mha"
    good = out.read_bytes()
    out.write_bytes(b"" if damage == "empty" else good[: len(good) // 2])
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out", continue_prediction=True)
    assert report.predicted == ["c"] and report.already_done == []
    assert read_image(out)[0].sum() == np.prod(GEO.size_zyx)
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out", continue_prediction=True)
    assert report.already_done == ["c"]


def test_two_cases_that_would_write_one_file_are_refused_before_predicting(tmp_path):
    """Case A's probability map saved as an image is A_prob.mha, the mask of a case named A_prob: one would silently
    overwrite the other, so the run is refused naming both; as npz (the default) the names differ."""
    for case, z in (("A", -5.0), ("A_prob", 0.0)):
        write_image(np.full(GEO.size_zyx, 1300, np.float32), GEO, tmp_path / "in" / f"{case}_0000.mha")
        write_image(np.full(GEO.size_zyx, z, np.float32), GEO, tmp_path / "in" / f"{case}_0001.mha")
    with pytest.raises(HiennuError, match=r"cases A and A_prob would both write .*A_prob\.mha; rename one"):
        make_baseline("zadc").predict_folder(tmp_path / "in", tmp_path / "out", save_probabilities=True,
                                             probability_format="image")
    assert not (tmp_path / "out").exists()
    report = make_baseline("zadc").predict_folder(tmp_path / "in", tmp_path / "out", save_probabilities=True)
    assert report.predicted == ["A", "A_prob"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["A.mha", "A_prob.mha", "A_prob.npz",
                                                                   "A_prob_prob.npz"]


def test_output_folder_that_is_a_file_is_refused_before_predicting(tmp_path):
    write_image(np.full(GEO.size_zyx, 1300, np.float32), GEO, tmp_path / "in" / "c_0000.mha")
    write_image(np.zeros(GEO.size_zyx, np.float32), GEO, tmp_path / "in" / "c_0001.mha")
    (tmp_path / "out").write_text("a file")
    with pytest.raises(HiennuError, match="is an existing file"):
        make_baseline("zadc").predict_folder(tmp_path / "in", tmp_path / "out")
    with pytest.raises(HiennuError, match="is a file, not a folder"):
        make_baseline("zadc").predict_folder(tmp_path / "in", tmp_path / "out" / "sub")


def test_evaluation_output_that_is_a_folder_is_refused(tmp_path):
    label = np.zeros(GEO.size_zyx, np.uint8)
    write_image(label, GEO, tmp_path / "ref" / "c.mha")
    write_image(label, GEO, tmp_path / "pred" / "c.mha")
    (tmp_path / "summary").mkdir()
    with pytest.raises(HiennuError, match="is a folder"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", output_json=tmp_path / "summary", num_processes=1)
