"""Post-processing chosen by cross-validation: the candidates, the choice, its record, and prediction applying it."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from hiennu.errors import HiennuError
from hiennu.inference.model_zip import export_model_zip, load_model_zip
from hiennu.inference.predictor import Predictor
from hiennu.postprocessing.candidates import candidates
from hiennu.postprocessing.components import keep_components_touching
from hiennu.postprocessing.record import POSTPROCESSING_FILE, PostProcessing, apply_postprocessing, load_postprocessing
from hiennu.postprocessing.selection import choose, postprocessing_table, select_postprocessing
from hiennu.io.image import read_image, write_image
from helpers import (GEOM, MODEL, case_arrays, make_model_dir, network_mask, raw_and_model_with_false_positives,
                     stub_network)



def test_keep_components_touching_keeps_only_overlapping_components():
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1, 1:3, 1:3] = 1          # component A
    mask[2, 6, 6] = 1              # component B (one voxel), diagonal neighbour of C: one 26-component
    mask[3, 7, 7] = 1
    marker = np.zeros_like(mask, dtype=bool)
    marker[1, 2, 2] = True         # overlaps A only
    kept = keep_components_touching(mask, marker)
    assert kept.dtype == np.uint8 and kept[1, 1:3, 1:3].all() and kept.sum() == 4
    marker[3, 7, 7] = True         # now B+C (26-connected) is kept whole
    assert keep_components_touching(mask, marker).sum() == 6
    assert keep_components_touching(np.zeros_like(mask), marker).sum() == 0


def test_apply_removes_small_components_then_keeps_rule_touching_ones():
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[0, 0:3, 0:3] = 1          # 9 voxels, touches the rule
    mask[3, 5:8, 5:8] = 1          # 9 voxels, away from the rule
    mask[2, 4, 0] = 1              # 1 voxel, on the rule
    zadc = np.zeros(mask.shape, np.float32)
    zadc[0, 1, 1] = -3.0
    zadc[2, 4, 0] = -5.0
    adc = np.ones(mask.shape, np.float32)
    assert apply_postprocessing(mask, PostProcessing(), zadc, adc).sum() == 19
    assert apply_postprocessing(mask, PostProcessing(min_component_voxels=5)).sum() == 18
    assert apply_postprocessing(mask, PostProcessing(keep_touching_rule=True), zadc, adc).sum() == 10
    assert apply_postprocessing(mask, PostProcessing(5, True), zadc, adc).sum() == 9
    adc[0, 1, 1] = 0               # the rule holds only inside the brain (ADC != 0)
    assert apply_postprocessing(mask, PostProcessing(5, True), zadc, adc).sum() == 0
    with pytest.raises(HiennuError, match="needs the case's ZADC"):
        apply_postprocessing(mask, PostProcessing(keep_touching_rule=True))


def test_candidates_and_nnunet_choice_rule():
    options = candidates((5, 10))
    assert [p.name for p in options] == ["none", "remove < 5 vox", "remove < 10 vox", "touch ZADC<-2",
                                         "remove < 5 vox + touch ZADC<-2", "remove < 10 vox + touch ZADC<-2"]
    assert choose(options, [0.50, 0.49, 0.48, 0.50, 0.47, 0.46]) == 0      # nothing beats none (a tie is not a gain)
    assert choose(options, [0.50, 0.52, 0.55, 0.51, 0.54, 0.53]) == 2      # the best that beats none
    with pytest.raises(ValueError):
        choose(options[1:], [0.5] * 5)


def test_choose_needs_one_finite_score_per_candidate():
    options = candidates((5, 10))
    with pytest.raises(ValueError, match=r"5 score\(s\) for 6 candidate\(s\)"):
        choose(options, [0.5, 0.9, 0.4, 0.3, 0.2])        # would silently ignore the last candidate
    with pytest.raises(ValueError, match=r"7 score\(s\) for 6"):
        choose(options, [0.5, 0.4, 0.4, 0.3, 0.2, 0.1, 0.9])  # would pick an index with no candidate
    with pytest.raises(ValueError, match="finite"):
        choose(options, [0.5, float("nan"), 0.4, 0.3, 0.2, 0.1])


def test_select_postprocessing_on_pooled_folds_writes_the_record(tmp_path):
    raw, model = raw_and_model_with_false_positives(tmp_path)
    (model / "fold_0" / "validation" / "summary.json").write_text("{}")  # not a mask: ignored
    record = select_postprocessing(model, raw, folds=[0, 1])
    assert record == json.loads((model / POSTPROCESSING_FILE).read_text())
    assert record["num_cases"] == 4 and record["folds"] == [0, 1]
    assert record["case_ids"] == ["case_0", "case_1", "case_2", "case_3"]
    by_name = {c["name"]: c["cv_dice"] for c in record["candidates"]}
    assert by_name["none"] == pytest.approx(2 * 32 / (32 + 35))
    assert by_name["remove < 5 vox"] == by_name["touch ZADC<-2"] == 1.0
    assert by_name["remove < 50 vox"] == 0.0  # the lesion itself (32 voxels) goes too
    # ties between equally good candidates keep the earlier, simpler one
    assert record["chosen_name"] == "remove < 5 vox" and record["chosen_dice"] == 1.0
    assert load_postprocessing(model) == PostProcessing(min_component_voxels=5)
    assert "remove < 5 vox" in postprocessing_table({"TrainerX": record})
    # which checkpoint made the masks (no recorded one: the old default, best) and the plans' size rule
    assert record["validation_checkpoints"] == {"0": "checkpoint_best.pth", "1": None}
    assert record["plans_min_component_voxels"] == 0
    assert set(record["nested"]["chosen_per_fold"]) == {"0", "1"}
    # -f 0 0 1 is folds 0 and 1 (it was read as fold 0 twice and blamed on the split: "validation mask in two folds")
    assert select_postprocessing(model, raw, folds=[0, 0, 1], write=False) == record


def test_select_postprocessing_names_what_is_missing(tmp_path):
    raw, model = raw_and_model_with_false_positives(tmp_path)
    with pytest.raises(HiennuError, match="fold 2: .*fold_2 not found"):
        select_postprocessing(model, raw, folds=[0, 1, 2])
    (model / "fold_2" / "validation").mkdir(parents=True)
    with pytest.raises(HiennuError, match="fold 2: no validation masks"):
        select_postprocessing(model, raw, folds=[0, 1, 2])
    (raw / "labelsTr" / "case_1.mha").unlink()
    with pytest.raises(HiennuError, match="fold 1, case case_1: no label .*case_1.mha"):
        select_postprocessing(model, raw, folds=[0, 1])


def _write_record(model_dir, post: PostProcessing) -> None:
    (model_dir / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": post.to_dict(), "chosen_name": post.name}))


def test_predictor_applies_the_stored_choice_in_folder_zip_and_case_prediction(tmp_path):
    model_dir = make_model_dir(tmp_path / "results")
    images = case_arrays()
    images[1][:] = 0.0
    images[1][:, 8:, :] = -3.0     # the rule region: only predicted components reaching it survive
    images[0][:] = 1000.0
    post = PostProcessing(min_component_voxels=3, keep_touching_rule=True)
    expected = np.zeros_like(network_mask())
    expected[2:4, 9:12, 5:9] = 1
    assert np.array_equal(apply_postprocessing(network_mask(), post, images[1], images[0]), expected)
    plain = stub_network(Predictor.from_model_dir(model_dir, device="cpu", use_mirroring=False))
    assert np.array_equal(plain.predict_case(images, GEOM)[0], network_mask())

    _write_record(model_dir, post)
    chosen = stub_network(Predictor.from_model_dir(model_dir, device="cpu", use_mirroring=False))
    assert chosen.postprocessing == post
    assert np.array_equal(chosen.predict_case(images, GEOM)[0], expected)
    assert Predictor.from_model_dir(model_dir, device="cpu", use_postprocessing=False).postprocessing == PostProcessing()
    # an explicit component size replaces the stored one; the rule part stays
    assert Predictor.from_model_dir(model_dir, device="cpu", min_component_voxels=7).postprocessing == PostProcessing(7, True)

    inp = tmp_path / "in"
    for c, array in enumerate(images):
        write_image(array, GEOM, inp / f"case_{c:04d}.mha")
    chosen.predict_folder(inp, tmp_path / "out")
    assert np.array_equal(read_image(tmp_path / "out" / "case.mha", dtype=np.uint8)[0], expected)

    out = export_model_zip(model_dir, tmp_path / "m.zip")
    with zipfile.ZipFile(out) as zf:
        assert f"{MODEL}/{POSTPROCESSING_FILE}" in zf.namelist()
    assert load_model_zip(out).postprocessing == post
    from_zip = stub_network(Predictor.from_zip(out, device="cpu", use_mirroring=False))
    assert np.array_equal(from_zip.predict_case(images, GEOM)[0], expected)


def test_a_bad_record_is_refused_naming_the_file(tmp_path):
    model_dir = make_model_dir(tmp_path / "results", folds=(0,))
    (model_dir / POSTPROCESSING_FILE).write_text(json.dumps({"chosen": {"min_component_voxels": -1}}))
    with pytest.raises(HiennuError, match=r"postprocessing.json: min_component_voxels must be"):
        Predictor.from_model_dir(model_dir, device="cpu")
    with pytest.raises(HiennuError, match=r"postprocessing.json"):
        export_model_zip(model_dir, tmp_path / "m.zip")
