"""Input-folder layouts of the predictor: nnU-Net, BONBID (flat and release folders), challenge; every ending."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiennu.errors import HiennuError
from hiennu.inference.layouts import CaseInputError, discover_input_cases, read_case
from hiennu.io.image import Geometry, write_image

GEOM = Geometry((6, 5, 4), (1.5, 1.5, 3.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
ENDINGS = [".mha", ".nii.gz", ".nii", ".nrrd"]


def _write(path: Path, value: float, geometry: Geometry = GEOM) -> Path:
    write_image(np.full(geometry.size_zyx, value, np.float32), geometry, path)
    return path


@pytest.mark.parametrize("ending", ENDINGS)
def test_nnunet_layout(tmp_path, ending):
    _write(tmp_path / f"a_0000{ending}", 1000)
    _write(tmp_path / f"a_0001{ending}", -3)
    _write(tmp_path / f"b_0000{ending}", 1200)
    _write(tmp_path / f"b_0001{ending}", 0.5)
    cases = discover_input_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert all(c.problem is None and c.layout == "nnunet" for c in cases)
    assert cases[0].output_name() == f"a{ending}"
    images, geometry = read_case(cases[0])
    assert [float(i.mean()) for i in images] == [1000.0, -3.0]
    assert geometry.size_xyz == GEOM.size_xyz


@pytest.mark.parametrize("ending", [".mha", ".nii.gz"])
def test_bonbid_flat_layout_ignores_labels(tmp_path, ending):
    _write(tmp_path / f"MGHNICU_010-VISIT_01-ADC_ss{ending}", 1000)
    _write(tmp_path / f"Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10{ending}", -3)
    _write(tmp_path / f"MGHNICU_010-VISIT_01_lesion{ending}", 1)
    (case,) = discover_input_cases(tmp_path)
    assert (case.case_id, case.layout, case.problem) == ("MGHNICU_010-VISIT_01", "bonbid", None)
    assert case.files[0].name.endswith(f"ADC_ss{ending}") and case.files[1].name.startswith("Zmap_")
    assert case.output_name() == f"MGHNICU_010-VISIT_01{ending}"


def test_bonbid_release_folders(tmp_path):
    (tmp_path / "1ADC_ss").mkdir()
    (tmp_path / "2Z_ADC").mkdir()
    (tmp_path / "3LABEL").mkdir()
    for n in ("010", "015"):
        _write(tmp_path / "1ADC_ss" / f"MGHNICU_{n}-VISIT_01-ADC_ss.mha", 1000)
        _write(tmp_path / "3LABEL" / f"MGHNICU_{n}-VISIT_01_lesion.mha", 1)
    _write(tmp_path / "2Z_ADC" / "Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10.mha", -3)
    cases = discover_input_cases(tmp_path)
    assert [c.case_id for c in cases] == ["MGHNICU_010-VISIT_01", "MGHNICU_015-VISIT_01"]
    assert cases[0].problem is None and cases[0].layout == "bonbid_folders"
    assert "missing channel(s) 1 (ZADC)" in cases[1].problem
    with pytest.raises(CaseInputError, match="MGHNICU_015-VISIT_01"):
        read_case(cases[1])


def test_challenge_layout_pairs_single_files(tmp_path):
    adc = tmp_path / "images" / "skull-stripped-adc-brain-mri"
    zadc = tmp_path / "images" / "z-score-adc"
    adc.mkdir(parents=True)
    zadc.mkdir(parents=True)
    _write(adc / "1b2c-uuid-adc.mha", 1000)
    _write(zadc / "9f8e-uuid-zadc.mha", -3)
    (case,) = discover_input_cases(tmp_path)
    assert case.layout == "challenge" and case.problem is None
    assert case.files == [adc / "1b2c-uuid-adc.mha", zadc / "9f8e-uuid-zadc.mha"]


def test_channel_order_follows_model_channel_names(tmp_path):
    _write(tmp_path / "MGHNICU_010-VISIT_01-ADC_ss.mha", 1000)
    _write(tmp_path / "Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10.mha", -3)
    (case,) = discover_input_cases(tmp_path, channel_names=("ZADC", "ADC"))
    assert case.files[0].name.startswith("Zmap_")
    with pytest.raises(HiennuError, match="ADC and a ZADC"):
        discover_input_cases(tmp_path, channel_names=("T1", "T2"))


def test_missing_channel_and_duplicate_are_named(tmp_path):
    _write(tmp_path / "a_0000.mha", 1)
    _write(tmp_path / "b_0000.mha", 1)
    _write(tmp_path / "b_0001.mha", 1)
    _write(tmp_path / "b_0001.nii.gz", 1)
    _write(tmp_path / "c_0000.mha", 1)
    _write(tmp_path / "c_0001.mha", 1)
    cases = {c.case_id: c for c in discover_input_cases(tmp_path)}
    assert "missing channel(s) 1 (ZADC)" in cases["a"].problem and "a_0000.mha" in cases["a"].problem
    assert "b_0001.mha" in cases["b"].problem and "b_0001.nii.gz" in cases["b"].problem
    assert cases["c"].problem is None


def test_mismatched_grid_is_reported_by_case_and_file(tmp_path):
    other = Geometry((6, 5, 4), (1.5, 1.5, 2.0), (1.0, 2.0, 3.0), GEOM.direction)
    _write(tmp_path / "a_0000.mha", 1)
    _write(tmp_path / "a_0001.mha", 1, other)
    (case,) = discover_input_cases(tmp_path)
    with pytest.raises(CaseInputError, match=r"case a: a_0001.mha lies on a different grid.*spacing"):
        read_case(case)


def test_unreadable_file_is_reported(tmp_path):
    _write(tmp_path / "a_0000.mha", 1)
    (tmp_path / "a_0001.mha").write_bytes(b"")
    (case,) = discover_input_cases(tmp_path)
    with pytest.raises(CaseInputError, match="case a: .*a_0001.mha: file is empty"):
        read_case(case)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(HiennuError, match="no input cases found"):
        discover_input_cases(tmp_path)
    with pytest.raises(HiennuError, match="does not exist"):
        discover_input_cases(tmp_path / "nope")


def test_real_bonbid_release_layout(real_bonbid_dir):
    cases = discover_input_cases(real_bonbid_dir)
    assert len(cases) == 37
    assert all(c.problem is None and c.layout == "bonbid_folders" for c in cases)
    images, geometry = read_case(cases[0])
    assert images[0].shape == geometry.size_zyx == images[1].shape


def test_outputs_take_the_adc_files_geometry_and_ending_whatever_the_channel_order(tmp_path):
    # the ZADC within the grid tolerance of the ADC but not bit-identical (as MGHNICU_331's is in the release)
    near = Geometry(GEOM.size_xyz, (1.50001, 1.5, 3.0), GEOM.origin_xyz, GEOM.direction)
    _write(tmp_path / "a_0000.nii.gz", -3, near)  # a model whose dataset.json lists ZADC first
    _write(tmp_path / "a_0001.mha", 1000)
    (case,) = discover_input_cases(tmp_path, ("ZADC", "ADC"))
    assert case.reference == 1 and case.output_name() == "a.mha"
    _, geometry = read_case(case)
    assert geometry.spacing_xyz == GEOM.spacing_xyz
    (case,) = discover_input_cases(tmp_path, ("T1", "T2"))  # no ADC channel: channel 0 gives the geometry
    zadc_spacing = read_case(case)[1].spacing_xyz
    assert case.reference == 0 and zadc_spacing != GEOM.spacing_xyz and abs(zadc_spacing[0] - 1.50001) < 1e-6


def test_a_channel_off_the_adcs_grid_is_named_against_the_adc_file(tmp_path):
    _write(tmp_path / "a_0000.mha", -3, Geometry(GEOM.size_xyz, (2.0, 1.5, 3.0), GEOM.origin_xyz, GEOM.direction))
    _write(tmp_path / "a_0001.mha", 1000)
    (case,) = discover_input_cases(tmp_path, ("ZADC", "ADC"))
    with pytest.raises(CaseInputError, match="a_0000.mha lies on a different grid than a_0001.mha"):
        read_case(case)


def test_an_all_zero_adc_is_refused_naming_the_file(tmp_path):
    _write(tmp_path / "a_0000.mha", 0)
    _write(tmp_path / "a_0001.mha", -3)
    (case,) = discover_input_cases(tmp_path)
    with pytest.raises(CaseInputError, match="case a: .*a_0000.mha is all zero, so the case has no brain"):
        read_case(case)
