"""Every command end to end with ``-q``: nothing on the console; and plans identifiers (``-p``) through
plan, train, predict and export."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest
import SimpleITK as sitk

from hiennu.io.image import read_image, write_image

DATASET = "Dataset901_Quiet"


@contextlib.contextmanager
def console(record: dict, name: str):
    """Capture everything written to the console into record[name]: ``sys.stdout``/``sys.stderr`` (which
    pytest replaces) and file descriptors 1 and 2 (worker processes, C code)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds, saved_streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        stream = open(tmp.fileno(), "w", buffering=1, closefd=False)
        sys.stdout = sys.stderr = stream  # hiennu's console handler writes to the current sys.stderr
        try:
            yield
        finally:
            stream.flush()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
            stream.close()
            tmp.seek(0)
            record[name] = tmp.read().decode(errors="replace")


def quiet_run(record: dict, name: str, main, argv: list[str]) -> None:
    with console(record, name):
        code = main(argv + ["-q"])
    assert code == 0, f"{name} exited with {code}: {record[name]}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run every command once with -q on a tiny synthetic dataset; returns (tmp folder, console output per command)."""
    from hiennu.cli import (apply_postprocessing, convert_bonbid, demo, determine_postprocessing, ensemble, evaluate,
                            export_model, find_best_configuration, install_model, loss_study, make_synthetic,
                            plan_and_preprocess, plot_overlay, predict, predict_challenge, train)
    tmp = tmp_path_factory.mktemp("quiet")
    env = {name: str(tmp / name) for name in ("hiennu_raw", "hiennu_preprocessed", "hiennu_results")}
    out: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        quiet_run(out, "make_synthetic", make_synthetic.main, ["-d", "901", "--name", "Quiet", "--cases", "5"])
        raw = tmp / "hiennu_raw" / DATASET
        quiet_run(out, "plan_and_preprocess", plan_and_preprocess.main,
                  ["-d", "901", "-c", "3d_fullres", "--plan-for", "cpu", "-np", "1"])
        quiet_run(out, "plan_and_preprocess -p", plan_and_preprocess.main,
                  ["-d", "901", "-c", "3d_fullres", "--plan-for", "gpu", "-np", "1", "-p", "Wide"])
        common = ["--epochs", "1", "--iterations-per-epoch", "1", "--num-workers", "0", "-device", "cpu"]
        quiet_run(out, "train", train.main, ["901", "TrainerDice", "0", *common, "--npz"])
        quiet_run(out, "train -p", train.main, ["901", "-tr", "TrainerDice", "0", "-p", "Wide", *common,
                                                "--no-final-validation"])
        quiet_run(out, "predict", predict.main, ["-i", str(raw / "imagesTr"), "-o", str(tmp / "pred"), "-d", "901",
                                                 "-tr", "TrainerDice", "-f", "0", "--disable_tta", "-device", "cpu"])
        quiet_run(out, "predict -p", predict.main, ["-i", str(raw / "imagesTr"), "-o", str(tmp / "pred_wide"),
                                                    "-d", "901", "-p", "Wide", "-f", "0", "--device", "cpu"])
        quiet_run(out, "plot_overlay", plot_overlay.main, ["-i", str(raw / "imagesTr"), "-p", str(tmp / "pred"),
                                                           "-r", str(raw / "labelsTr"), "-o", str(tmp / "overlay")])
        quiet_run(out, "evaluate", evaluate.main, ["-ref", str(raw / "labelsTr"), "-pred", str(tmp / "pred"),
                                                   "-np", "1"])
        quiet_run(out, "determine_postprocessing", determine_postprocessing.main,
                  ["-d", "901", "-tr", "TrainerDice", "-f", "0", "--dry-run"])
        quiet_run(out, "find_best_configuration", find_best_configuration.main,
                  ["-d", "901", "-c", "3d_fullres", "-tr", "TrainerDice", "-f", "0", "-np", "1"])
        # the post-processing it chose for the model would change what the tests below predict with it
        (tmp / "hiennu_results" / DATASET / "TrainerDice__hiennuPlans__3d_fullres" / "postprocessing.json").unlink()
        record = tmp / "record" / "postprocessing.json"
        record.parent.mkdir()
        record.write_text('{"chosen": {"min_component_voxels": 2}}')
        quiet_run(out, "apply_postprocessing", apply_postprocessing.main,
                  ["-i", str(tmp / "pred"), "-o", str(tmp / "pred_pp"), "-pp", str(record)])
        validation = tmp / "hiennu_results" / DATASET / "TrainerDice__hiennuPlans__3d_fullres" / "fold_0" / "validation"
        shutil.copytree(validation, tmp / "validation_copy")
        quiet_run(out, "ensemble", ensemble.main, ["-i", str(validation), str(tmp / "validation_copy"), "-o",
                                                   str(tmp / "ensembled"), "--save-probabilities"])
        quiet_run(out, "export_model", export_model.main, ["-d", "901", "-tr", "TrainerDice", "-p", "Wide",
                                                           "-o", str(tmp / "wide.zip")])
        mp.setenv("hiennu_results", str(tmp / "installed"))
        quiet_run(out, "install_model", install_model.main, [str(tmp / "wide.zip"), "--default"])
        challenge = tmp / "challenge_in"
        adc, geometry = read_image(raw / "imagesTr" / "SYN_000_0000.mha")
        zadc, _ = read_image(raw / "imagesTr" / "SYN_000_0001.mha")
        write_image(adc, geometry, challenge / "images" / "skull-stripped-adc-brain-mri" / "case.mha")
        write_image(zadc, geometry, challenge / "images" / "z-score-adc" / "case.mha")
        quiet_run(out, "predict_challenge", predict_challenge.main,
                  ["--input", str(challenge), "--output", str(tmp / "challenge_out"), "--device", "cpu"])
        mp.setenv("hiennu_results", env["hiennu_results"])
        # the same options as the training above, so the study reuses that finished fold
        quiet_run(out, "loss_study", loss_study.main, ["-d", "901", "--trainers", "TrainerDice", "--folds", "0",
                                                       *common, "-np", "1", "--figure-cases", "1",
                                                       "-o", str(tmp / "study")])
        official = tmp / "official"
        write_image(adc, geometry, official / "1ADC_ss" / "MGHNICU_001-VISIT_01-ADC_ss.mha")
        write_image(zadc, geometry, official / "2Z_ADC" / "Zmap_MGHNICU_001-VISIT_01-ADC_smooth2mm_clipped10.mha")
        label, _ = read_image(raw / "labelsTr" / "SYN_000.mha", dtype=np.float32)
        write_image(label, geometry, official / "3LABEL" / "MGHNICU_001-VISIT_01_lesion.mha")
        quiet_run(out, "convert_bonbid", convert_bonbid.main, [str(official), "-d", "902"])
        quiet_run(out, "demo", demo.main, ["-o", str(tmp / "demo"), "--cases", "5", "--test-cases", "1",
                                           "--epochs", "1", "--iterations-per-epoch", "1", "--trainers",
                                           "TrainerDice", "--target-size", "16", "16", "16", "-np", "1"])
        # the default model in one command, with a tiny recipe, into its own results root
        from hiennu.cli import train_default_model
        from hiennu.pipeline import default_model
        mp.setenv("hiennu_results", str(tmp / "default_model_results"))
        mp.setattr(default_model, "DEFAULT_RECIPE", (default_model.RecipeStep(
            "3d_fullres", trainer="TrainerDice", epochs=1, iterations_per_epoch=1),))
        fold_options = default_model.fold_options
        mp.setattr(default_model, "fold_options",
                   lambda *a, **k: dataclasses.replace(fold_options(*a, **k), num_workers=0))
        quiet_run(out, "train_default_model", train_default_model.main, ["-d", "901", "--device", "cpu", "-np", "1"])
    return tmp, out


COMMANDS = ["make_synthetic", "plan_and_preprocess", "plan_and_preprocess -p", "train", "train -p", "predict",
            "predict -p", "evaluate", "export_model", "install_model", "predict_challenge", "loss_study",
            "convert_bonbid", "demo", "determine_postprocessing", "apply_postprocessing", "find_best_configuration",
            "ensemble", "plot_overlay", "train_default_model"]


@pytest.mark.parametrize("command", COMMANDS)
def test_console_stays_silent_under_quiet(pipeline, command):
    _, out = pipeline
    assert out[command] == "", f"{command} -q printed:\n{out[command]}"


def test_every_console_script_was_run_quietly(pipeline):
    from setup_scripts import console_modules
    assert console_modules() <= {c.split()[0] for c in COMMANDS}


def test_quiet_run_still_writes_the_full_training_log(pipeline):
    tmp, _ = pipeline
    log = (tmp / "hiennu_results" / DATASET / "TrainerDice__hiennuPlans__3d_fullres" / "fold_0" /
           "training_log.txt").read_text()
    assert "epoch 0: train loss" in log and "training finished" in log


def test_plans_name_keeps_an_edited_plan_beside_the_original(pipeline):
    tmp, _ = pipeline
    pre = tmp / "hiennu_preprocessed" / DATASET
    assert (pre / "plans.json").is_file() and (pre / "Wide.json").is_file()
    assert (pre / "3d_fullres").is_dir() and (pre / "Wide_3d_fullres").is_dir()
    from hiennu.plans import load_plans
    original = load_plans(pre / "plans.json")
    assert original.plans_name == "hiennuPlans" and original.configurations["3d_fullres"].planned_for == "cpu"
    wide = load_plans(pre / "Wide.json")
    assert wide.plans_name == "Wide" and wide.configurations["3d_fullres"].planned_for == "gpu"
    results = tmp / "hiennu_results" / DATASET
    assert (results / "TrainerDice__hiennuPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth").is_file()
    assert (results / "TrainerDice__Wide__3d_fullres" / "fold_0" / "checkpoint_final.pth").is_file()
    mask = sitk.ReadImage(str(tmp / "pred_wide" / "SYN_000.mha"))
    assert mask.GetSize() == sitk.ReadImage(str(tmp / "hiennu_raw" / DATASET / "labelsTr" / "SYN_000.mha")).GetSize()
    assert (tmp / "installed" / DATASET / "TrainerDice__Wide__3d_fullres" / "plans.json").is_file()
    assert (tmp / "challenge_out" / "images" / "hie-lesion-segmentation" / "overlay.mha").is_file()


def test_demo_names_its_test_cases_apart_from_training_cases(pipeline):
    tmp, _ = pipeline
    train_cases = {p.name.split("_0000")[0] for p in (tmp / "demo" / "hiennu_raw").glob("*/imagesTr/*_0000.mha")}
    test_cases = {p.name.split("_0000")[0] for p in (tmp / "demo" / "test_cases" / "imagesTr").glob("*_0000.mha")}
    assert train_cases and test_cases and not train_cases & test_cases
    assert all(c.startswith("SYNTEST_") for c in test_cases)


def test_the_console_capture_sees_what_a_verbose_command_prints(tmp_path, monkeypatch):
    from hiennu.cli import make_synthetic
    monkeypatch.setenv("hiennu_raw", str(tmp_path))
    out: dict[str, str] = {}
    with console(out, "verbose"):
        assert make_synthetic.main(["-d", "903", "--cases", "1"]) == 0
    assert "wrote" in out["verbose"] and "synthesizing" in out["verbose"]  # the log line and the progress bar


def test_predict_files_matches_the_command_on_paths_and_images(pipeline):
    from hiennu.errors import HiennuError
    from hiennu.inference.predictor import Predictor
    tmp, _ = pipeline
    raw = tmp / "hiennu_raw" / DATASET / "imagesTr"
    predictor = Predictor.from_model_dir(tmp / "hiennu_results" / DATASET / "TrainerDice__hiennuPlans__3d_fullres",
                                         folds=[0], device="cpu", use_mirroring=False)
    adc, zadc = raw / "SYN_001_0000.mha", raw / "SYN_001_0001.mha"
    from_paths = predictor.predict_files(adc, str(zadc))
    from_images = predictor.predict_files(sitk.ReadImage(str(adc)), sitk.ReadImage(str(zadc)))
    expected = sitk.ReadImage(str(tmp / "pred" / "SYN_001.mha"))  # hiennu_predict --disable_tta
    reference = sitk.ReadImage(str(adc))
    for mask in (from_paths, from_images):
        assert mask.GetPixelIDTypeAsString() == "8-bit unsigned integer"
        assert (mask.GetSize(), mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection()) == (
            reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())
        assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(expected))
    shifted = sitk.ReadImage(str(zadc))
    shifted.SetOrigin(tuple(o + 10.0 for o in shifted.GetOrigin()))
    with pytest.raises(HiennuError, match="different grid"):
        predictor.predict_files(adc, shifted)


def test_reports_record_versions_options_and_seed(pipeline):
    import json
    tmp, _ = pipeline
    import torch
    import hiennu
    fold = tmp / "hiennu_results" / DATASET / "TrainerDice__hiennuPlans__3d_fullres" / "fold_0"
    debug = json.loads((fold / "debug.json").read_text())
    summary = json.loads((tmp / "pred" / "summary.json").read_text())["provenance"]
    validation = json.loads((fold / "validation" / "summary.json").read_text())["provenance"]
    for record in (debug, summary, validation):
        assert record["hiennu_version"] == hiennu.__version__
        assert set(record["versions"]) >= {"hiennu", "torch", "SimpleITK", "numpy", "scipy", "batchgenerators"}
        assert all(record["versions"][k] for k in ("torch", "SimpleITK", "numpy", "scipy", "batchgenerators"))
        assert "git_commit" in record
    assert debug["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert debug["seed"] == 12345 and debug["options"]["epochs"] == 1 and debug["options"]["plans_name"] == "hiennuPlans"
    assert summary["options"]["num_processes"] == 1
    report = (tmp / "study" / "report.md").read_text()
    section = report[report.index("## How this report was made"):]
    for word in (f"hiennu {hiennu.__version__}", "torch ", "SimpleITK ", "numpy ", "scipy ", "batchgenerators ",
                 "seed: 12345", "`trainers=['TrainerDice']`", "`folds=[0]`"):
        assert word in section, word


def test_demo_tells_how_to_predict_with_its_models(pipeline):
    from hiennu.cli.demo import summary_lines
    from hiennu.study.demo import DemoResult
    tmp, _ = pipeline
    model = tmp / "demo" / "hiennu_results" / "Dataset990_SyntheticDemo" / "TrainerDice__hiennuPlans__3d_fullres"
    assert model.is_dir()
    result = DemoResult(tmp / "demo", tmp / "r.md", [], tmp / "p", tmp / "s.json",
                        {"dice": 0.5, "masd": 1.0, "nsd": 0.5}, {"x": 1.0}, model, "Dataset990_SyntheticDemo")
    text = "\n".join(summary_lines(result))
    assert f"export hiennu_results={tmp / 'demo' / 'hiennu_results'}" in text
    assert "-d Dataset990_SyntheticDemo -tr TrainerDice" in text and f"-m {model}" in text
