"""The end-to-end demo (at a smaller size) and the loss study's outputs."""

import csv

import numpy as np
import pytest

from hiennu.errors import HiennuError
from hiennu.io.image import read_image
from hiennu.study.demo import MARKER, DemoOptions, prepare_output_dir, run_demo
from hiennu.study.loss_study import RULE_ZADC, RULE_ZADC_CC, figure_cases


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    return run_demo(DemoOptions(output_dir=out, num_cases=6, test_cases=2, epochs=1, iterations_per_epoch=2,
                                num_processes=1))


def test_demo_writes_every_stage(demo):
    out = demo.output_dir
    assert (out / MARKER).is_file()
    raw = out / "hiennu_raw" / "Dataset990_SyntheticDemo"
    pre = out / "hiennu_preprocessed" / "Dataset990_SyntheticDemo"
    assert (raw / "dataset.json").is_file() and len(list((raw / "labelsTr").glob("*.mha"))) == 6
    for name in ("plans.json", "dataset_fingerprint.json", "splits_final.json"):
        assert (pre / name).is_file()
    for trainer in ("TrainerDiceFocal", "TrainerTverskyHDT"):
        fold = out / "hiennu_results" / "Dataset990_SyntheticDemo" / f"{trainer}__hiennuPlans__3d_fullres" / "fold_0"
        for name in ("checkpoint_best.pth", "checkpoint_final.pth", "progress.png", "training_log.txt",
                     "validation/summary.json"):
            assert (fold / name).is_file(), name
    assert set(demo.seconds) == {"make data", "plan and preprocess", "train + loss study", "predict test cases",
                                 "evaluate"}


def test_demo_predictions_keep_native_geometry_and_scores_are_sane(demo):
    for image in sorted((demo.output_dir / "test_cases" / "imagesTr").glob("*_0000.mha")):
        case = image.name[: -len("_0000.mha")]
        mask, geometry = read_image(demo.predictions / f"{case}.mha", dtype=None)
        _, native = read_image(image)
        assert geometry.differences(native) == [] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
    assert 0.0 <= demo.test_scores["dice"] <= 1.0 and 0.0 <= demo.test_scores["nsd"] <= 1.0
    assert demo.evaluation.is_file()


def test_loss_study_report_lists_trainers_and_rules(demo):
    study = demo.study_report.parent
    report = demo.study_report.read_text()
    for method in ("TrainerDiceFocal", "TrainerTverskyHDT", RULE_ZADC, RULE_ZADC_CC):
        assert method in report
    assert "Above the simple rules" in report and "Wilcoxon" in report
    assert "p (Holm)" in report and "![Dice per case](dice_boxplot.png)" in report and "Dice [95 % CI]" in report
    assert "Post-processing was not chosen" in report  # the demo runs fold 0 only
    with open(study / "table.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"TrainerDiceFocal", "TrainerTverskyHDT", RULE_ZADC, RULE_ZADC_CC}
    assert float(rows["TrainerDiceFocal"]["epochs_mean"]) == 1.0
    assert float(rows["TrainerDiceFocal"]["steps_mean"]) == 2 and float(rows["TrainerDiceFocal"]["train_min_mean"]) > 0
    assert rows[RULE_ZADC]["dice_ci95_low"] and float(rows[RULE_ZADC]["hd95_mean"]) >= 0   # a number, not blank
    for fig in demo.study_figures:
        assert fig.is_file() and fig.stat().st_size > 1000
    # the rule is scored on exactly the cases the trainers validated on
    with open(study / "per_case.csv") as f:
        per_case = list(csv.DictReader(f))
    cases = {m: sorted(r["case_id"] for r in per_case if r["method"] == m) for m in rows}
    assert cases[RULE_ZADC] == cases["TrainerDiceFocal"] == cases["TrainerTverskyHDT"]


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(HiennuError, match="not made by hiennu_demo"):
        prepare_output_dir(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user data"


@pytest.mark.parametrize("bad, message", [(dict(folds=[7]), r"--folds takes fold numbers 0-4 or 'all', got 7"),
                                          (dict(trainers=["TrainerDice", "TrainerNope"]), "TrainerNope"),
                                          (dict(seed=-1), "--seed must be a whole number")])
def test_demo_options_are_checked_before_its_folder_is_emptied(tmp_path, bad, message):
    """A previous demo's folder is emptied only once the options are known to work (a bad --folds emptied it and
    made a fresh dataset before the study refused)."""
    out = prepare_output_dir(tmp_path / "demo")
    (out / "previous.txt").write_text("an earlier demo's result")
    with pytest.raises(HiennuError, match=message):
        run_demo(DemoOptions(output_dir=out, num_cases=6, test_cases=2, epochs=1, iterations_per_epoch=2,
                             num_processes=1, **bad))
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "previous.txt"])


def test_the_demo_predicts_with_the_folder_its_trainer_class_names(hiennu_roots):
    from hiennu.study.demo import demo_model_dir
    path = demo_model_dir("Dataset990_SyntheticDemo", "hiennu.training.trainers:TrainerDiceFocal")
    assert path == hiennu_roots["hiennu_results"] / "Dataset990_SyntheticDemo" / "TrainerDiceFocal__hiennuPlans__3d_fullres"


def test_figure_cases_spread_over_lesion_sizes():
    rows = [{"case_id": f"c{i}", "ref_voxels": v} for i, v in enumerate([0, 5, 50, 500, 5000, 0])]
    assert figure_cases(rows, 3) == ["c1", "c3", "c4"]
    assert figure_cases(rows, 10) == ["c1", "c2", "c3", "c4"]
    assert figure_cases([{"case_id": "a", "ref_voxels": 0}], 3) == []


def test_study_on_all_folds_chooses_post_processing_and_prediction_applies_it(tmp_path):
    import json

    from hiennu.postprocessing.record import POSTPROCESSING_FILE, load_postprocessing, with_size_rule
    from hiennu.inference.predictor import Predictor

    result = run_demo(DemoOptions(output_dir=tmp_path / "run", num_cases=10, test_cases=1, epochs=1,
                                  iterations_per_epoch=1, trainers=("TrainerDice",), folds=(0, 1, 2, 3, 4),
                                  target_size_xyz=(16, 16, 16), num_processes=1))
    record = json.loads((result.model_dir / POSTPROCESSING_FILE).read_text())
    assert record["folds"] == [0, 1, 2, 3, 4] and record["num_cases"] == 10
    by_name = {c["name"]: c["cv_dice"] for c in record["candidates"]}
    assert record["chosen_dice"] == max(by_name.values())
    assert record["chosen_dice"] > by_name["none"] or record["chosen_name"] == "none"
    report = result.study_report.read_text()
    assert "## Post-processing chosen by cross-validation" in report and record["chosen_name"] in report
    predictor = Predictor.from_model_dir(result.model_dir, device="cpu")
    chosen = load_postprocessing(result.model_dir)
    plain = Predictor.from_model_dir(result.model_dir, device="cpu", use_postprocessing=False)
    # the whole chosen record reaches the predictor (the size rule of the plans, 0 here, met on top)
    assert predictor.postprocessing.to_dict() == with_size_rule(chosen, 0).to_dict()
    assert (predictor.postprocessing.to_dict() != plain.postprocessing.to_dict()) == (record["chosen_name"] != "none")
    # hiennu_determine_postprocessing on the five trained folds writes the study's record byte for byte
    from hiennu.cli import determine_postprocessing as determine_cli
    from hiennu.paths import use_roots

    written = (result.model_dir / POSTPROCESSING_FILE).read_bytes()
    (result.model_dir / POSTPROCESSING_FILE).unlink()
    run = tmp_path / "run"
    with use_roots(run / "hiennu_raw", run / "hiennu_preprocessed", run / "hiennu_results"):
        assert determine_cli.main(["-d", result.dataset, "-tr", "TrainerDice", "-c", "3d_fullres", "-q"]) == 0
    assert (result.model_dir / POSTPROCESSING_FILE).read_bytes() == written
    assert record["num_candidates"] == len(record["candidates"])
