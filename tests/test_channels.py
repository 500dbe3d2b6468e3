"""One rule decides which channel is ADC (the brain) and which is ZADC, in every stage (issue 22)."""

import numpy as np
import pytest

from hiennu.geometry.cropping import crop_and_resample
from hiennu.io.channels import adc_zadc_channels, brain_channel, channel_index
from hiennu.planning.planner import is_adc_channel, is_zmap_channel


def test_names_ignore_case_and_separators():
    assert channel_index(["adc", "Z_ADC"], "ZADC") == 1
    assert channel_index(["ADC", "z-adc"], "ZADC") == 1
    assert channel_index(["T2", "FLAIR"], "ZADC") is None
    assert adc_zadc_channels(["ZADC", "ADC"]) == (1, 0)


def test_planner_uses_the_same_rule():
    for name in ("ZADC", "Z_ADC", "zadc", "ADC", "T2", "Zmap", "ADC_ZADC"):
        assert is_zmap_channel(name) == (channel_index([name], "ZADC") == 0), name
        assert is_adc_channel(name) == (channel_index([name], "ADC") == 0), name
    # the old loose rule took any name starting with Z for a z-map
    assert not is_zmap_channel("Zmap")


def test_brain_channel_is_adc_wherever_it_is():
    assert brain_channel(["ADC", "ZADC"]) == 0
    assert brain_channel(["ZADC", "ADC"]) == 1
    assert brain_channel(["T2"]) == 0


def test_crop_follows_the_brain_channel():
    zadc = np.full((6, 8, 8), -1.0, np.float32)  # non-zero everywhere: it is not the brain
    adc = np.zeros((6, 8, 8), np.float32)
    adc[2:4, 3:6, 1:4] = 1000.0
    out, record = crop_and_resample(np.stack([zadc, adc]), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), brain_index=1)
    assert record.bbox_zyx == [[2, 4], [3, 6], [1, 4]]
    assert out.shape == (2, 2, 3, 3)


def test_the_planners_round_trip_crops_by_the_adc_wherever_it_is(tmp_path, monkeypatch):
    """The crop round trip measured while planning takes its brain box from the ADC file, as preprocessing does,
    also when dataset.json lists ZADC first (it took channel 0's file)."""
    from hiennu.io.cases import CaseFiles
    from hiennu.io.dataset_json import DatasetJson, save_dataset_json
    from hiennu.pipeline import plan_and_preprocess as pipeline
    save_dataset_json(DatasetJson(name="T", channel_names=["ZADC", "ADC"], num_training=1), tmp_path)
    case = CaseFiles("c", [tmp_path / "c_0000.mha", tmp_path / "c_0001.mha"], tmp_path / "c.mha")
    seen = {}

    class Stop(Exception):
        """Raised where the round trip would be measured: what it was given is all this test needs."""

    def capture(fp, cfg, with_adc, opts):
        seen.update(with_adc)
        raise Stop

    monkeypatch.setattr(pipeline, "compute_fingerprint", lambda *a, **k: object())
    monkeypatch.setattr(pipeline, "save_fingerprint", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "plan_experiment", lambda *a, **k: type("P", (), {
        "configurations": {pipeline.DEFAULT_CONFIGURATION: object()}, "plans_name": None})())
    monkeypatch.setattr(pipeline, "_heed_patch_roundtrip", capture)
    with pytest.raises(Stop):
        pipeline.make_plans(tmp_path, tmp_path, [case], pipeline.PlanAndPreprocessOptions())
    assert seen == {"c": (tmp_path / "c_0001.mha", tmp_path / "c.mha")}
