"""Raw-dataset integrity check: one test per kind of bad input, each asserting the message names the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hiennu.datasets.integrity import check_raw_dataset, verify_raw_dataset
from hiennu.errors import DataIntegrityError
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, write_image

GEO = Geometry((6, 5, 4), (1.5, 1.5, 3.0), (1.0, -2.0, 5.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
CASES = ("caseA", "caseB")


@pytest.fixture
def raw(tmp_path) -> Path:
    """A clean 2-case dataset (ADC, ZADC, uint8 label) in nnU-Net layout."""
    root = tmp_path / "Dataset010_T"
    rng = np.random.default_rng(0)
    for case in CASES:
        write_image(rng.uniform(500, 3000, GEO.size_zyx).astype(np.float32), GEO, root / "imagesTr" / f"{case}_0000.mha")
        write_image(rng.uniform(-10, 10, GEO.size_zyx).astype(np.float32), GEO, root / "imagesTr" / f"{case}_0001.mha")
        write_image(rng.integers(0, 2, GEO.size_zyx).astype(np.uint8), GEO, root / "labelsTr" / f"{case}.mha")
    save_dataset_json(DatasetJson(name="T", num_training=2), root / "dataset.json")
    return root


def _one_problem(raw: Path, *fragments: str) -> str:
    problems = check_raw_dataset(raw)
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], (fragment, problems[0])
    return problems[0]


def test_clean_dataset_passes(raw):
    assert check_raw_dataset(raw) == []
    verify_raw_dataset(raw)


def test_missing_channel(raw):
    (raw / "imagesTr" / "caseB_0001.mha").unlink()
    _one_problem(raw, "case caseB: channel 1 (ZADC) file caseB_0001.mha is missing", "add it to imagesTr/")


def test_missing_label(raw):
    (raw / "labelsTr" / "caseA.mha").unlink()
    _one_problem(raw, "case caseA: label file labelsTr/caseA.mha is missing", "add it, or remove the case's images")


@pytest.mark.parametrize("field, value, word", [
    ("size_xyz", (6, 5, 5), "size"),
    ("spacing_xyz", (1.5, 1.5, 3.5), "spacing"),
    ("origin_xyz", (1.0, -2.0, 6.0), "origin"),
    ("direction", (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0), "direction"),
])
def test_grid_mismatch(raw, field, value, word):
    geo = Geometry(**{**GEO.to_dict(), field: value})
    write_image(np.ones(geo.size_zyx, np.float32), geo, raw / "imagesTr" / "caseA_0001.mha")
    _one_problem(raw, "case caseA", "caseA_0001.mha", "not on the grid", word)


def test_label_grid_mismatch(raw):
    geo = Geometry(**{**GEO.to_dict(), "origin_xyz": (0.0, 0.0, 0.0)})
    write_image(np.zeros(GEO.size_zyx, np.uint8), geo, raw / "labelsTr" / "caseB.mha")
    _one_problem(raw, "case caseB", "labelsTr/caseB.mha", "origin")


@pytest.mark.parametrize("bad, word", [(np.nan, "1 NaN and 0 infinite"), (np.inf, "0 NaN and 1 infinite")])
def test_nan_and_inf_voxels(raw, bad, word):
    a = np.ones(GEO.size_zyx, np.float32)
    a[1, 2, 3] = bad
    write_image(a, GEO, raw / "imagesTr" / "caseA_0000.mha")
    _one_problem(raw, "case caseA", "caseA_0000.mha", word)


def test_non_binary_label(raw):
    lab = np.zeros(GEO.size_zyx, np.uint8)
    lab[0, 0, 0] = 2
    write_image(lab, GEO, raw / "labelsTr" / "caseB.mha")
    _one_problem(raw, "case caseB", "caseB.mha", "values other than 0 and 1: 2", "map the lesion's value to 1")


def test_float_binary_label_is_accepted(raw):
    write_image(np.ones(GEO.size_zyx, np.float32), GEO, raw / "labelsTr" / "caseB.mha")
    assert check_raw_dataset(raw) == []


def test_empty_file(raw):
    (raw / "imagesTr" / "caseA_0001.mha").write_bytes(b"")
    _one_problem(raw, "case caseA", "caseA_0001.mha", "empty")


def test_corrupt_header(raw):
    (raw / "imagesTr" / "caseA_0000.mha").write_bytes(b"this is not an image\x00\x01")
    _one_problem(raw, "case caseA", "caseA_0000.mha", "cannot be read")


def test_truncated_voxels(raw):
    path = raw / "labelsTr" / "caseA.mha"
    write_image(np.zeros(GEO.size_zyx, np.uint8), GEO, path, compress=False)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    _one_problem(raw, "case caseA", "caseA.mha", "cannot be read")


def test_not_3d(raw):
    import SimpleITK as sitk
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkFloat32), str(raw / "imagesTr" / "caseB_0000.mha"))
    _one_problem(raw, "case caseB", "caseB_0000.mha", "2D")


def test_num_training_disagrees(raw):
    d = json.loads((raw / "dataset.json").read_text())
    d["numTraining"] = 3
    (raw / "dataset.json").write_text(json.dumps(d))
    _one_problem(raw, "dataset.json", "numTraining is 3", "holds 2")


def test_extra_channel_disagrees_with_channel_count(raw):
    write_image(np.ones(GEO.size_zyx, np.float32), GEO, raw / "imagesTr" / "caseA_0002.mha")
    _one_problem(raw, "case caseA", "caseA_0002.mha", "declares 2 channel(s)")


def test_file_ending_disagrees(raw):
    write_image(np.ones(GEO.size_zyx, np.float32), GEO, raw / "imagesTr" / "caseC_0000.nii.gz")
    _one_problem(raw, "caseC_0000.nii.gz", "file_ending '.mha'")
    # every file of another ending than dataset.json's: each named, and no advice to change numTraining
    (raw / "imagesTr" / "caseC_0000.nii.gz").unlink()
    d = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**d, "file_ending": ".nii.gz"}))
    problems = check_raw_dataset(raw)
    assert problems and all("file_ending '.nii.gz'" in p for p in problems), problems
    assert not any("numTraining" in p for p in problems), problems


def test_unknown_extra_files(raw):
    (raw / "imagesTr" / "notes.txt").write_text("hello")
    (raw / "labelsTr" / "caseZ.mha").write_bytes((raw / "labelsTr" / "caseA.mha").read_bytes())
    (raw / ".DS_Store").write_text("")  # hidden files are ignored
    problems = check_raw_dataset(raw)
    assert len(problems) == 2, problems
    assert any("notes.txt" in p and "unknown file" in p for p in problems)
    assert any("case caseZ" in p and "labelsTr/caseZ.mha" in p and "no images" in p for p in problems)


def test_missing_or_bad_dataset_json(raw):
    (raw / "dataset.json").write_text("{not json")
    _one_problem(raw, "dataset.json", "not valid JSON")
    (raw / "dataset.json").unlink()
    _one_problem(raw, "dataset.json: not found")


def test_imagesTs_cases_are_checked(raw):
    write_image(np.ones(GEO.size_zyx, np.float32), GEO, raw / "imagesTs" / "caseT_0000.mha")
    _one_problem(raw, "case caseT", "caseT_0001", "missing")


def test_verify_raises_with_every_problem_and_writes_nothing(raw):
    (raw / "imagesTr" / "caseB_0001.mha").unlink()
    (raw / "labelsTr" / "caseA.mha").unlink()
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    with pytest.raises(DataIntegrityError) as e:
        verify_raw_dataset(raw)
    assert len(e.value.problems) == 2 and "caseB_0001" in str(e.value) and "labelsTr/caseA" in str(e.value)
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before


def test_real_converted_dataset_is_clean(real_bonbid_dir, hiennu_roots):
    from hiennu.datasets.bonbid import convert_bonbid
    out = convert_bonbid(real_bonbid_dir, 1)
    assert check_raw_dataset(out) == []


def test_a_singular_direction_is_named_as_such_not_as_a_corrupt_file(raw, tmp_path):
    from hiennu.errors import ImageReadError
    from hiennu.io.image import read_image
    path = raw / "imagesTr" / "caseA_0000.mha"
    write_image(np.ones(GEO.size_zyx, np.float32), GEO, path, compress=False)
    path.write_bytes(path.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1"))
    problem = _one_problem(raw, "case caseA", "caseA_0000.mha", "direction matrix in its header", "is singular",
                           "fix the header")
    assert "corrupt" not in problem
    with pytest.raises(ImageReadError, match="is singular"):
        read_image(path)


def test_an_upper_case_ending_reads_like_its_lower_case_twin(raw):
    from hiennu.io.image import read_image
    for case in CASES:
        for name in (f"imagesTr/{case}_0000", f"imagesTr/{case}_0001", f"labelsTr/{case}"):
            (raw / f"{name}.mha").rename(raw / f"{name}.MHA")
    assert check_raw_dataset(raw) == []
    array, geometry = read_image(raw / "imagesTr" / "caseA_0000.MHA")
    assert array.shape == GEO.size_zyx and geometry.spacing_xyz == GEO.spacing_xyz


def test_a_missing_num_training_is_called_missing(raw):
    d = json.loads((raw / "dataset.json").read_text())
    del d["numTraining"]
    (raw / "dataset.json").write_text(json.dumps(d))
    _one_problem(raw, "has no numTraining; add \"numTraining\": 2")


def test_a_missing_channel_is_named_in_its_own_folder_and_a_stray_file_hides_no_count(raw):
    """Found reviewing the messages: an imagesTs case missing a channel was told to add it to imagesTr/; one stray file
    of another ending hid a numTraining that was wrong anyway."""
    write_image(np.ones(GEO.size_zyx, np.float32), GEO, raw / "imagesTs" / "caseT_0000.mha")
    _one_problem(raw, "case caseT: channel 1 (ZADC) file caseT_0001.mha is missing", "add it to imagesTs/")
    (raw / "imagesTs" / "caseT_0000.mha").unlink()
    d = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**d, "numTraining": 5}))
    write_image(np.ones(GEO.size_zyx, np.float32), GEO, raw / "imagesTr" / "notes_0000.nii.gz")
    problems = check_raw_dataset(raw)
    assert any("numTraining is 5 but imagesTr/ holds 2" in p for p in problems), problems
