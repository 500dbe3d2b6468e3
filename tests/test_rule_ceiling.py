"""benchmarks/rule_ceiling.py: the perfect veto and the perfect component filter of the ZADC rule, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import load_benchmark
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, write_image


@pytest.fixture
def bench():
    return load_benchmark("rule_ceiling")


def _case():
    """ZADC, ADC and reference of one (1, 4, 12) case.

    Reference: x 0-5 of row 1 (6 voxels). The rule (ZADC < -2): x 2-7 of row 1 (4 lesion voxels, 2 more attached
    to them) and an isolated false component at x 10-11 of row 3 (2 voxels), whose ADC is high (2000)."""
    zadc = np.zeros((1, 4, 12), np.float32)
    adc = np.full((1, 4, 12), 1000.0, np.float32)
    ref = np.zeros((1, 4, 12), np.uint8)
    ref[0, 1, 0:6] = 1
    zadc[0, 1, 2:8] = -3.0
    zadc[0, 3, 10:12] = -2.5
    adc[0, 3, 10:12] = 2000.0
    return zadc, adc, ref


def test_the_ceilings_of_one_case_by_hand(bench):
    zadc, adc, ref = _case()
    c = bench.case_ceiling(zadc, adc, ref, -2.0, max_adc=1500.0)
    assert c.rule == pytest.approx(2 * 4 / (6 + 8))           # rule: 8 voxels, 4 of them lesion
    assert c.veto == pytest.approx(2 * 4 / (6 + 4))           # only the 4 lesion voxels of the rule are left
    assert c.components == pytest.approx(2 * 4 / (6 + 6))     # the touching component whole (6), the speck gone
    assert c.components_capped == pytest.approx(2 * 4 / (6 + 6))
    assert (c.found, c.lesion) == (4, 6)
    # at t = -2.75 only the -3 voxels are in the rule: the speck (ZADC -2.5) drops out by itself
    deep = bench.case_ceiling(zadc, adc, ref, -2.75)
    assert deep.rule == pytest.approx(2 * 4 / (6 + 6)) and deep.components_capped is None
    # outside the brain (ADC 0) nothing is rule, and an empty reference with an empty rule scores 1
    empty = bench.case_ceiling(zadc, np.zeros_like(adc), np.zeros_like(ref), -2.0)
    assert (empty.rule, empty.veto, empty.components) == (1.0, 1.0, 1.0)


def test_the_command_prints_one_row_per_threshold_and_names_a_grid_mismatch(bench, tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw" / "Dataset009_Ceil"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    save_dataset_json(DatasetJson(name="Ceil", num_training=1), raw)
    zadc, adc, ref = _case()
    geometry = Geometry((12, 4, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(adc, geometry, raw / "imagesTr" / "c1_0000.mha")
    write_image(zadc, geometry, raw / "imagesTr" / "c1_0001.mha")
    write_image(ref, geometry, raw / "labelsTr" / "c1.mha")
    monkeypatch.setenv("hiennu_raw", str(tmp_path / "raw"))
    assert bench.main(["-d", "Ceil", "--thresholds", "-2", "-2.75", "--max-adc", "1500"]) == 0
    out = capsys.readouterr().out
    assert "| -2 | 1 | 0.571 | 0.667 | 0.800 | 0.667 | 0.667 |" in out
    assert "| -2.75 | 1 |" in out
    shifted = Geometry((12, 4, 1), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(zadc, shifted, raw / "imagesTr" / "c1_0001.mha")
    with pytest.raises(SystemExit):
        bench.main(["-d", "Ceil"])
    err = capsys.readouterr().err
    assert "case c1" in err and "c1_0001.mha" in err and "another grid" in err
