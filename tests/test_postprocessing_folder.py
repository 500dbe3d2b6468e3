"""hiennu_determine_postprocessing -i FOLDER: the choice on a folder of cross-validation masks (nnU-Net's
``nnUNetv2_determine_postprocessing -i -ref``) is the choice made on a model's validation masks, and bad input is
one line with nothing written."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from hiennu.cli import apply_postprocessing as apply_cli
from hiennu.cli import determine_postprocessing as determine_cli
from hiennu.io.image import read_image
from hiennu.paths import ModelFolder, use_roots

from test_postprocessing_package import _write_model

CHOICE_FIELDS = ("chosen", "chosen_name", "baseline_dice", "chosen_dice", "num_candidates", "candidates", "nested",
                 "folds", "num_cases", "case_ids")


def _folder_of_masks(tmp_path: Path, folds=5, n=15) -> tuple[Path, Path, Path, list[str]]:
    """A model's validation masks copied into one folder, and the splits_final.json of its folds."""
    raw, model = _write_model(tmp_path, folds=folds, n=n)
    crossval = tmp_path / "crossval"
    crossval.mkdir()
    for mask in sorted(model.glob("fold_*/validation/*.mha")):
        shutil.copy(mask, crossval / mask.name)
    cases = sorted(p.name[:-len(".mha")] for p in crossval.glob("*.mha"))
    splits = [{"train": [c for j, c in enumerate(cases) if j % folds != f], "val": cases[f::folds]}
              for f in range(folds)]
    (tmp_path / "pre" / raw.name).mkdir(parents=True)
    (tmp_path / "pre" / raw.name / "splits_final.json").write_text(json.dumps(splits))
    return raw, model, crossval, cases


def test_a_folder_of_cv_masks_gets_the_choice_its_model_gets_and_the_record_applies(tmp_path, capsys):
    raw, model, crossval, cases = _folder_of_masks(tmp_path)
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert determine_cli.main(["-d", "Tiny", "-tr", "TrainerX", "-q"]) == 0
        by_model = json.loads(ModelFolder(model).postprocessing.read_text())
        assert determine_cli.main(["-i", str(crossval), "-d", "Tiny"]) == 0
        out = capsys.readouterr().out
        record = json.loads((crossval / "postprocessing.json").read_text())
        for field in CHOICE_FIELDS:
            assert record[field] == by_model[field], field
        assert record["splits"] == str(tmp_path / "pre" / raw.name / "splits_final.json")
        assert f"chosen: {record['chosen_name']}" in out and "nested MASD (mm)" in out
        assert f"hiennu_apply_postprocessing -i MASKS -o OUTPUT -pp {crossval / 'postprocessing.json'}" in out
        # nnU-Net's spelling: -ref the dataset's labelsTr instead of -d, the record elsewhere with -o
        assert determine_cli.main(["-i", str(crossval), "-ref", str(raw / "labelsTr"), "-o",
                                   str(tmp_path / "pp.json"), "-q"]) == 0
        assert json.loads((tmp_path / "pp.json").read_text())["chosen"] == record["chosen"]
        # a record of its own is replaced when chosen again
        assert determine_cli.main(["-i", str(crossval), "-d", "Tiny", "-q"]) == 0
        # -ref spelled relative to the working folder, as a user types it in the dataset
        os.chdir(raw)
        try:
            assert determine_cli.main(["-i", str(crossval), "-ref", "labelsTr", "--dry-run", "-q"]) == 0
            os.chdir(raw / "labelsTr")
            assert determine_cli.main(["-i", str(crossval), "-ref", ".", "-d", "Tiny", "--dry-run", "-q"]) == 0
        finally:
            os.chdir(tmp_path)
        # the record applies to the masks it was chosen on
        assert apply_cli.main(["-i", str(crossval), "-o", str(tmp_path / "post"), "-pp",
                               str(crossval / "postprocessing.json"), "--images", str(raw / "imagesTr"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "post").iterdir()) == [f"{c}.mha" for c in cases]


def test_masks_of_another_tools_folds_are_placed_by_its_splits_file(tmp_path):
    """--splits: the folds file of the tool that predicted the masks (nnU-Net's format), not the dataset's own."""
    raw, _, crossval, cases = _folder_of_masks(tmp_path)
    (tmp_path / "pre" / raw.name / "splits_final.json").unlink()
    other = [{"train": [], "val": cases[:7]}, {"train": [], "val": cases[7:]}]
    (tmp_path / "nnunet_splits.json").write_text(json.dumps(other))
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert determine_cli.main(["-i", str(crossval), "-d", "Tiny", "--splits", str(tmp_path / "nnunet_splits.json"),
                                   "--dry-run", "-q"]) == 0
    assert not (crossval / "postprocessing.json").exists()


def _refused(capsys, argv: list[str], *words: str) -> None:
    assert determine_cli.main(argv + ["-q"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


def test_bad_folders_are_refused_on_one_line_and_nothing_is_written(tmp_path, capsys):
    raw, _, crossval, cases = _folder_of_masks(tmp_path)
    splits = tmp_path / "pre" / raw.name / "splits_final.json"
    before = sorted(p.name for p in crossval.iterdir())
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        i = ["-i", str(crossval)]
        _refused(capsys, i + ["-d", "Tiny", "-o", str(raw / "pp.json")], "lies in the raw dataset")
        _refused(capsys, i + ["-d", "Tiny", "-o", str(crossval / "case01.mha")], "name a .json file")
        _refused(capsys, i + ["-d", "Tiny", "-o", str(tmp_path)], "name a .json file")
        # nnU-Net writes its own postprocessing.json into its cross-validation folder: never replaced
        nnunet = {"postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
                  "postprocessing_kwargs": [{"labels_or_regions": 1}]}
        (crossval / "postprocessing.json").write_text(json.dumps(nnunet))
        before = sorted(p.name for p in crossval.iterdir())
        _refused(capsys, i + ["-d", "Tiny"], "is no record of hiennu_determine_postprocessing", "-o")
        assert json.loads((crossval / "postprocessing.json").read_text()) == nnunet
        assert determine_cli.main(i + ["-d", "Tiny", "--dry-run", "-q"]) == 0  # writes nothing: nothing to refuse
        # nor a file whose keys look like a record's: hiennu_find_best_configuration's inference_information.json
        (tmp_path / "inference_information.json").write_text(json.dumps({"chosen": {}, "candidates": []}))
        _refused(capsys, i + ["-d", "Tiny", "-o", str(tmp_path / "inference_information.json")], "is no record")
        (crossval / "postprocessing.json").unlink()
        before.remove("postprocessing.json")
        # a mask that is a link to nothing is named, not left out
        (crossval / "case99.mha").symlink_to(tmp_path / "gone.mha")
        _refused(capsys, i + ["-d", "Tiny"], "case99.mha is a link to", "does not exist")
        (crossval / "case99.mha").unlink()
        _refused(capsys, i + ["-ref", str(raw / "imagesTr")], "must be the labelsTr folder of a raw dataset")
        _refused(capsys, i + ["-ref", str(tmp_path / "nowhere")], "folder of reference labels not found")
        _refused(capsys, ["-i", str(tmp_path / "empty"), "-d", "Tiny"], "folder of masks not found")
        (tmp_path / "empty").mkdir()
        _refused(capsys, ["-i", str(tmp_path / "empty"), "-d", "Tiny"], "no masks")
        _refused(capsys, i + ["-d", "Tiny", "--candidates", "judged-rule"], "case case00: no case00_prob.npz",
                 "--candidates all or cap-filter")
        # a mask that no fold holds out, then folds that hold every mask out in one fold
        data = json.loads(splits.read_text())
        data[0]["val"].remove("case05")
        splits.write_text(json.dumps(data))
        _refused(capsys, i + ["-d", "Tiny"], "case(s) case05 of -i are no validation case", "--splits")
        splits.write_text(json.dumps([{"train": [], "val": cases}]))
        _refused(capsys, i + ["-d", "Tiny"], "all held out by fold 0", "two folds or more")
        splits.unlink()
        _refused(capsys, i + ["-d", "Tiny"], "splits_final.json: not found", "--splits")
        # a mask on another grid than its label
        mask, geometry = read_image(crossval / "case03.mha", dtype=np.uint8)
        from hiennu.io.image import Geometry, write_image
        write_image(mask, Geometry(geometry.size_xyz, (0.5, 0.5, 1.0), geometry.origin_xyz, geometry.direction),
                    crossval / "case03.mha")
        splits.write_text(json.dumps([{"train": [], "val": cases[::2]}, {"train": [], "val": cases[1::2]}]))
        _refused(capsys, i + ["-d", "Tiny"], "case case03: validation mask", "another grid")
    assert sorted(p.name for p in crossval.iterdir()) == before
    assert not (raw / "pp.json").exists()


@pytest.mark.parametrize("argv, words", [
    (["-d", "Tiny", "-tr", "TrainerX", "-o", "x.json"], "-o only go with -i FOLDER"),
    (["-d", "Tiny", "--rule", "--splits", "s.json"], "--splits only go with -i FOLDER"),
    (["-i", "masks", "-d", "Tiny", "-c", "3d_fullres"], "-c name a trained model's folds or plans"),
    (["-i", "masks", "-d", "Tiny", "-f", "0", "1"], "-f name a trained model's folds or plans"),
    (["-i", "masks"], "-d DATASET or -ref ITS_labelsTr"),
    (["-i", "masks", "-d", "Tiny", "-p", "OtherPlans"], "-p name a trained model's folds or plans"),
    (["-i", "masks", "-d", "Tiny", "--probabilities", "p"], "--probabilities is read by --candidates judged-rule only"),
    (["-tr", "TrainerX"], "required: -d/--dataset"),
    (["-i", "masks", "-tr", "TrainerX", "-d", "Tiny"], "not allowed with argument"),
])
def test_options_that_do_not_go_together_are_refused_by_the_parser(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        determine_cli.main(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


def test_apply_postprocessing_names_a_mask_that_is_a_dead_link(tmp_path, capsys):
    """hiennu_apply_postprocessing lists its masks as the -i mode does (commands.folder_masks): a dead link is named,
    not left out."""
    raw, _, crossval, _ = _folder_of_masks(tmp_path)
    record = tmp_path / "pp.json"
    record.write_text(json.dumps({"chosen": {"min_component_voxels": 5}}))
    (crossval / "case99.mha").symlink_to(tmp_path / "gone.mha")
    assert apply_cli.main(["-i", str(crossval), "-o", str(tmp_path / "post"), "-pp", str(record), "-q"]) == 1
    assert "case99.mha is a link to" in capsys.readouterr().err
    assert not (tmp_path / "post").exists()


def test_a_nan_in_an_image_beside_the_masks_is_one_line_naming_the_case_and_file(tmp_path, capsys):
    """An ADC image with NaN voxels made every fitted ADC cap NaN (and a record of bare NaN tokens, not JSON) and
    changed a case's post-processed mask without a word: the choice, its application, the scores with images and
    the pictures refuse it naming the case and the file, and write nothing."""
    from hiennu.cli import evaluate as evaluate_cli
    from hiennu.cli import plot_overlay as overlay_cli
    from hiennu.io.image import write_image
    raw, _, crossval, _ = _folder_of_masks(tmp_path)
    adc = raw / "imagesTr" / "case03_0000.mha"
    image, geometry = read_image(adc)
    image[2:4] = np.nan
    write_image(image, geometry, adc)
    record = tmp_path / "pp.json"
    record.write_text(json.dumps({"chosen": {"max_adc": 1000.0}}))
    message = f"case case03: ADC image {adc} has 880 NaN and 0 infinite voxel(s); replace them"
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        _refused(capsys, ["-i", str(crossval), "-d", "Tiny"], message)
    assert not (crossval / "postprocessing.json").exists()
    assert apply_cli.main(["-i", str(crossval), "-o", str(tmp_path / "post"), "-pp", str(record),
                           "--images", str(raw / "imagesTr"), "-q"]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "post").exists()
    assert evaluate_cli.main([str(raw / "labelsTr"), str(crossval), "-img", str(raw / "imagesTr"),
                              "-o", str(tmp_path / "summary.json"), "-q"]) == 1
    assert f"case case03: image {adc} has 880 NaN" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()
    assert overlay_cli.main(["-i", str(raw / "imagesTr"), "-p", str(crossval), "-o", str(tmp_path / "png")]) == 1
    assert f"case case03: image {adc} has 880 NaN" in capsys.readouterr().err and not (tmp_path / "png").exists()


def test_probability_images_beside_the_masks_are_left_out_as_hiennu_predict_writes_them(tmp_path, capsys):
    """hiennu_predict --save-probabilities image writes CASE_prob.mha beside CASE.mha: applying a record to that
    folder, and choosing on it, read the masks and leave the probability images out (they were refused as masks
    that are not binary, of a case named CASE_prob)."""
    from hiennu.io.image import write_image
    raw, _, crossval, cases = _folder_of_masks(tmp_path)
    for case in cases:
        mask, geometry = read_image(crossval / f"{case}.mha")
        write_image(np.clip(mask * 0.8 + 0.1, 0, 1).astype(np.float32), geometry, crossval / f"{case}_prob.mha")
    record = tmp_path / "pp.json"
    record.write_text(json.dumps({"chosen": {"min_component_voxels": 5}}))
    assert apply_cli.main(["-i", str(crossval), "-o", str(tmp_path / "post"), "-pp", str(record), "-q"]) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "post").iterdir()) == [f"{case}.mha" for case in cases]
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert determine_cli.main(["-i", str(crossval), "-d", "Tiny", "-q"]) == 0, capsys.readouterr().err
    assert json.loads((crossval / "postprocessing.json").read_text())["num_cases"] == len(cases)


def test_a_missing_label_or_probabilities_folder_and_a_grid_are_worded_for_what_was_given(tmp_path, capsys):
    """A mask of -i without its label names both and the fix; a --probabilities folder that is not there says so
    (it said each case had no map there); apply's grid error names the mask, not a label."""
    raw, _, crossval, cases = _folder_of_masks(tmp_path)
    (raw / "labelsTr" / "case03.mha").unlink()
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        _refused(capsys, ["-i", str(crossval), "-ref", str(raw / "labelsTr")],
                 f"case case03: no label {raw / 'labelsTr' / 'case03.mha'} for the mask {crossval / 'case03.mha'}",
                 "or move the mask away")
        _refused(capsys, ["-i", str(crossval), "-d", "Tiny", "--candidates", "judged-rule", "--probabilities",
                          str(tmp_path / "nowhere")], f"--probabilities {tmp_path / 'nowhere'}: folder not found")
    from hiennu.inference.folder_prediction import write_probabilities
    from hiennu.io.image import Geometry
    shutil.copy(crossval / "case00.mha", raw / "labelsTr" / "case03.mha")  # back, so that a record can be chosen
    for case in cases:
        mask, geometry = read_image(crossval / f"{case}.mha")
        write_probabilities(np.clip(mask * 0.8 + 0.1, 0, 1), geometry, tmp_path / "probs" / f"{case}_prob.npz")
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert determine_cli.main(["-i", str(crossval), "-d", "Tiny", "--candidates", "judged-rule", "--probabilities",
                                   str(tmp_path / "probs"), "-o", str(tmp_path / "pp.json"), "-q"]) == 0
    apply = ["-i", str(crossval), "-o", str(tmp_path / "post"), "-pp", str(tmp_path / "pp.json"), "-q",
             "--images", str(raw / "imagesTr"), "--probabilities"]
    assert apply_cli.main(apply + [str(tmp_path / "nowhere")]) == 1
    assert f"--probabilities {tmp_path / 'nowhere'}: folder not found" in capsys.readouterr().err
    mask, geometry = read_image(crossval / "case01.mha")
    moved = Geometry(geometry.size_xyz, geometry.spacing_xyz, (9.0, 0.0, 0.0), geometry.direction)
    write_probabilities(np.clip(mask * 0.8 + 0.1, 0, 1), moved, tmp_path / "probs" / "case01_prob.npz")
    assert apply_cli.main(apply + [str(tmp_path / "probs")]) == 1
    assert "lie on another grid than the mask (origin" in capsys.readouterr().err
    assert not (tmp_path / "post").exists()
