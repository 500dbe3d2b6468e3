"""The commands' flags: shared style, nnU-Net spellings, devices, trainer arguments, error lines."""

from __future__ import annotations

import argparse
import importlib

import pytest

import hiennu
from setup_scripts import console_modules

MODULES = sorted(console_modules())


def parser_of(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"hiennu.cli.{module}").build_parser()


@pytest.mark.parametrize("module", MODULES)
def test_every_flag_has_help_and_the_shared_flags(module):
    p = parser_of(module)
    assert p.allow_abbrev is False
    visible = [a for a in p._actions if a.help != argparse.SUPPRESS]
    assert all(a.help for a in visible), [a.option_strings or a.dest for a in visible if not a.help]
    flags = {s for a in p._actions for s in a.option_strings}
    assert {"--version", "-q", "--quiet"} <= flags
    text = p.format_help()
    assert "(default:" in text or module in ("install_model", "convert_bonbid")
    assert "==SUPPRESS==" not in text


@pytest.mark.parametrize("module", MODULES)
def test_version_and_quiet(module, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"hiennu.cli.{module}").main(["--version"])
    assert e.value.code == 0
    assert hiennu.__version__ in capsys.readouterr().out


def test_defaults_are_shown():
    text = parser_of("loss_study").format_help()
    assert "random seed of every training (default: 12345)" in " ".join(text.split())
    assert "worker processes (default: 2)" in " ".join(parser_of("plan_and_preprocess").format_help().split())


def test_no_abbreviations():
    with pytest.raises(SystemExit):
        parser_of("train").parse_args(["D", "TrainerDice", "--epoch", "3"])


@pytest.mark.parametrize("module, argv, word", [
    ("predict", ["-i", "a", "-o", "b", "-part_id", "0"], "-part_id: options are taken only as --help spells them "
                                                         "(for -p art_id, write it with a space)"),
    ("plan_and_preprocess", ["-d", "1", "-pl", "X"], "-pl: options are taken only as --help spells them (for -p l"),
    ("train", ["1", "TrainerDice", "0", "-t", "X"], "-t: options are taken only as --help spells them"),
    ("evaluate", ["-r", "gt", "-pred", "p"], "-r: options are taken only as --help spells them"),
])
def test_single_dash_options_are_read_only_as_spelled(module, argv, word, capsys):
    """argparse read nnU-Net's -part_id as -p art_id, -pl as -p l and -t as -tr even with allow_abbrev off."""
    with pytest.raises(SystemExit):
        parser_of(module).parse_args(argv)
    assert f"unrecognized option {word}" in capsys.readouterr().err


def test_negative_numbers_and_equals_forms_still_parse():
    p = parser_of("plan_and_preprocess")
    assert p.parse_args(["-d", "1", "-np=3"]).num_processes == 3
    q = parser_of("predict")
    assert q.parse_args(["-i", "a", "-o", "b", "-f", "-1"]).folds == ["-1"]  # refused later, by the fold check
    assert q.parse_args(["-i", "a", "-o", "b", "-f0"]).folds == ["0"]  # argparse's attached short form
    assert p.parse_args(["-d5"]).dataset == "5"


def test_more_nnunet_spellings():
    plan = parser_of("plan_and_preprocess").parse_args(
        ["-d", "1", "-overwrite_target_spacing", "2", "1", "1", "--no_pp", "-gpu_memory_target", "12",
         "-overwrite_plans_name", "X", "--verify_dataset_integrity"])
    assert (plan.target_spacing, plan.no_preprocess, plan.gpu_memory_gb, plan.plans_name) == ([2.0, 1.0, 1.0], True,
                                                                                              12.0, "X")
    assert parser_of("predict").parse_args(["-i", "a", "-o", "b", "--c"]).continue_prediction is True
    assert parser_of("train").parse_args(["1", "TrainerDice", "0", "--val", "--val_best"]).validation_checkpoint == "best"
    assert parser_of("train").parse_args(["1", "TrainerDice", "0"]).validation_checkpoint == "final"


def test_nnunet_spellings_of_predict():
    args = parser_of("predict").parse_args(["-i", "in", "-o", "out", "-device", "cuda:1", "--disable_tta",
                                            "--save_probabilities", "--continue_prediction", "-npp", "2"])
    assert (args.device, args.disable_tta, args.save_probabilities, args.continue_prediction,
            args.preprocess_ahead) == ("cuda:1", True, "npz", True, 2)
    args = parser_of("predict").parse_args(["-i", "in", "-o", "out"])
    assert (args.device, args.disable_tta, args.save_probabilities, args.preprocess_ahead) == (None, False, None, 4)
    assert args.plans_name == "hiennuPlans"
    text = parser_of("predict").format_help()
    assert " -device" not in text and "--disable_tta" not in text and "-npp" not in text.replace("'s -npp", "")


def test_nnunet_spellings_of_train():
    from hiennu.cli.train import trainer_and_fold
    p = parser_of("train")
    args = p.parse_intermixed_args(["D", "-tr", "TrainerDice", "-c", "3d_paper", "2", "--c", "-num_gpus", "2",
                                    "-device", "cpu", "-p", "Mine"])
    assert trainer_and_fold(p, args) == ("TrainerDice", "2")
    assert (args.resume, args.num_gpus, args.device, args.configuration, args.plans_name) == (
        True, 2, "cpu", "3d_paper", "Mine")
    args = p.parse_intermixed_args(["D", "TrainerTverskyHDT"])
    assert trainer_and_fold(p, args) == ("TrainerTverskyHDT", "0") and args.resume is False


@pytest.mark.parametrize("argv", [["D", "3d_fullres", "0"], ["D", "3d_fullres", "0", "-tr", "TrainerDice"],
                                  ["D", "0", "-tr", "3d_fullres"]])
def test_train_says_did_you_mean_for_a_configuration(argv, capsys):
    from hiennu.cli import train
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    assert "did you mean -c 3d_fullres?" in capsys.readouterr().err


def test_train_needs_a_trainer(capsys):
    from hiennu.cli import train
    with pytest.raises(SystemExit):
        train.main(["D"])
    assert "name the trainer" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["train", "predict", "predict_challenge", "loss_study", "demo"])
def test_device_takes_the_same_values_everywhere(module):
    p = parser_of(module)
    base = {"train": ["D", "T"], "predict": ["-i", "a", "-o", "b"], "loss_study": ["-d", "D"]}.get(module, [])
    parse = p.parse_intermixed_args if module == "train" else p.parse_args
    for value in ("cpu", "cuda", "cuda:3", "mps", "CUDA:0"):
        assert parse(base + ["--device", value]).device == value.lower()
    for bad in ("gpu", "cuda:x", "cpu:0", "tpu"):
        with pytest.raises(SystemExit):
            parse(base + ["--device", bad])


def test_one_device_order_for_training_and_prediction(monkeypatch):
    import torch
    from hiennu import device
    from hiennu.device import parse_device, resolve_device
    from hiennu.errors import HiennuError
    from hiennu.inference import predictor
    assert parse_device("cuda:2") == ("cuda", 2)
    assert predictor.resolve_device is resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("hiennu.device.mps_available", lambda: True)
    assert resolve_device(None).type == "mps" and device.select_device(None).type == "mps"
    monkeypatch.setattr("hiennu.device.mps_available", lambda: False)
    assert resolve_device(None).type == "cpu" and device.select_device(None).type == "cpu"
    with pytest.raises(HiennuError, match="no CUDA device"):
        device.select_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert device.select_device("cuda") == torch.device("cuda", 0)
    assert device.select_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    with pytest.raises(HiennuError, match="needs GPU 2"):
        device.select_device("cuda:1", local_rank=1)


def test_loss_study_folds_all():
    from hiennu.cli.loss_study import build_parser
    from hiennu.errors import HiennuError
    from hiennu.study.loss_study import LossStudyOptions
    args = build_parser().parse_args(["-d", "D", "--folds", "all"])
    assert LossStudyOptions(dataset="D", folds=args.folds).folds == (0, 1, 2, 3, 4)
    assert LossStudyOptions(dataset="D", folds=["1", "3"]).folds == (1, 3)
    assert LossStudyOptions(dataset="D", folds=["3", "1", "3"]).folds == (1, 3)   # each fold's cases counted once
    assert LossStudyOptions(dataset="D").folds == (0, 1, 2, 3, 4)
    with pytest.raises(HiennuError, match="0-4 or 'all'"):
        LossStudyOptions(dataset="D", folds=["5"])


@pytest.mark.parametrize("error, line", [
    (PermissionError(13, "Permission denied", "/results/x"), "error: /results/x: Permission denied; check its "
     "permissions (read access for inputs, write access for outputs)"),
    (OSError(30, "Read-only file system", "/r/fold_1"), "error: /r/fold_1: Read-only file system; choose a folder "
     "you can write to (for results, e.g. export hiennu_results=...) or free some space, and run the command again"),
    (IsADirectoryError(21, "Is a directory", "/out"), "error: /out: Is a directory"),
    (FileExistsError(17, "File exists", "/a", None, "/b"), "error: /a -> /b: File exists"),
    (OSError("disk\nfull"), "error: disk full"),
])
def test_os_errors_become_one_error_line(error, line, capsys):
    from hiennu.cli._common import run

    def fail():
        raise error
    assert run(fail) == 1
    err = capsys.readouterr().err
    assert err.strip() == line and "Traceback" not in err


def test_a_real_file_system_error_names_the_path(tmp_path, capsys):
    from hiennu.cli import make_synthetic
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert make_synthetic.main(["-o", str(blocker / "data"), "--cases", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(blocker) in err and "Traceback" not in err and err.count("\n") == 1


def test_plans_file_names():
    from hiennu.errors import HiennuError
    from hiennu.paths import DEFAULT_PLANS_NAME, plans_file_name, preprocessed_data_name
    from hiennu.plans import PLANS_NAME
    assert DEFAULT_PLANS_NAME == PLANS_NAME
    assert plans_file_name(None) == plans_file_name(PLANS_NAME) == "plans.json"
    assert plans_file_name("Wide") == "Wide.json"
    assert preprocessed_data_name(PLANS_NAME, "3d_fullres") == "3d_fullres"
    assert preprocessed_data_name("Wide", "3d_fullres") == "Wide_3d_fullres"
    for bad in ("a__b", "../x", "plans", "dataset", "splits_final", ""):
        if bad:
            with pytest.raises(HiennuError):
                plans_file_name(bad)


def test_quiet_leaves_the_console_level_alone_after_a_log_file(tmp_path):
    import logging
    from hiennu.log import attach_file_handler, configure, detach_handler, get_logger
    configure(verbose=False)
    console = next(h for h in get_logger().handlers if getattr(h, "_hiennu", False))
    handler = attach_file_handler(tmp_path / "log.txt")
    get_logger("x").info("to the file only")
    detach_handler(handler)
    assert console.level == logging.WARNING
    assert "to the file only" in (tmp_path / "log.txt").read_text()
    configure(verbose=True)
    assert console.level == logging.INFO


def test_every_training_option_is_one_flag_of_train_and_of_the_study():
    import dataclasses
    from hiennu.cli.loss_study import NOT_STUDY_OPTIONS
    from hiennu.training.options import TrainingOptions
    fields = {f.name for f in dataclasses.fields(TrainingOptions)} - {"dataset", "fold"}
    assert fields <= {a.dest for a in parser_of("train")._actions}
    assert fields - set(NOT_STUDY_OPTIONS) <= {a.dest for a in parser_of("loss_study")._actions}
    args = parser_of("train").parse_intermixed_args(["D", "T", "--lr", "0.01", "--epochs", "3", "--c", "-num_gpus",
                                                     "2", "--no-final-validation", "-p", "Mine"])
    o = TrainingOptions.from_args(args, fold="2")
    assert (o.dataset, o.fold, o.learning_rate, o.epochs, o.resume, o.num_gpus, o.final_validation, o.plans_name) == (
        "D", 2, 0.01, 3, True, 2, False, "Mine")
    study = TrainingOptions.from_args(parser_of("loss_study").parse_args(["-d", "D", "--seed", "3"]))
    assert (study.dataset, study.seed, study.learning_rate, study.resume) == ("D", 3, None, False)
    # a seed numpy cannot take was accepted and failed after the network was built
    from hiennu.errors import HiennuError
    for seed in (-1, 2 ** 32, 1.5, True):
        with pytest.raises(HiennuError, match=r"--seed must be a whole number 0 <= seed < 2\^32"):
            TrainingOptions(dataset="D", seed=seed)


def test_a_loss_study_reference_outside_the_trainers_is_refused_not_replaced():
    """A mistyped --reference was silently replaced by the first trainer; named explicitly, it must be studied."""
    from hiennu.cli.loss_study import build_parser
    from hiennu.errors import HiennuError
    from hiennu.study.loss_study import LossStudyOptions
    with pytest.raises(HiennuError, match=r"--reference TrainerDcie is not among --trainers \(TrainerDice, "
                                          r"TrainerDiceFocal\)"):
        LossStudyOptions(dataset="D", trainers=["TrainerDice", "TrainerDiceFocal"], reference="TrainerDcie")
    args = build_parser().parse_args(["-d", "D", "--trainers", "TrainerDiceFocal", "TrainerTversky"])
    assert args.reference is None   # the study then takes TrainerDice when studied, else the first trainer
    assert LossStudyOptions(dataset="D", trainers=["TrainerDice"], reference="TrainerDice").reference == "TrainerDice"


def test_sigterm_unwinds_a_command_and_its_worker_processes_end_with_it(tmp_path):
    """kill (SIGTERM) is handled as Ctrl-C: the command prints 'terminated' and exits 143, and the worker processes
    it started end with it (killed outright, hiennu_train left its data-loading workers running on their own); a
    forked worker that inherits the handler ends as SIGTERM ends it by default, without a traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time
    script, pid_file = tmp_path / "command.py", tmp_path / "worker.pid"
    script.write_text(
        "import multiprocessing as mp, sys, time\n"
        "from pathlib import Path\n"
        "from hiennu.cli._common import run\n"
        "def sleeper():\n    time.sleep(60)\n"
        "def main():\n"
        "    worker = mp.get_context('fork').Process(target=sleeper, daemon=True)\n"
        "    worker.start()\n"
        "    Path(sys.argv[1]).write_text(str(worker.pid))\n"
        "    time.sleep(60)\n"
        "raise SystemExit(run(main))\n")
    command = subprocess.Popen([sys.executable, str(script), str(pid_file)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    command.send_signal(signal.SIGTERM)
    assert command.wait(20) == 143
    assert command.stderr.read() == "terminated\n"
    time.sleep(0.3)
    assert not os.path.exists(f"/proc/{worker}") or open(f"/proc/{worker}/stat").read().split()[2] == "Z"


def _run_script(tmp_path, body: str, preexec=None):
    import subprocess
    import sys
    script = tmp_path / "command.py"
    script.write_text("import os, signal, sys, time\nfrom pathlib import Path\nfrom hiennu.cli._common import run\n"
                      + body)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "ready")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def _wait_ready(tmp_path):
    import time
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_second_sigterm_does_not_cut_the_cleanup_short_and_a_parents_sig_ign_is_kept(tmp_path):
    """The first SIGTERM unwinds the command; one arriving during its cleanup is ignored, so the cleanup finishes.
    A command started with SIGTERM ignored (by its parent) keeps ignoring it, and after run() the handler that was
    there is back."""
    import signal
    command = _run_script(tmp_path, (
        "def main():\n"
        "    Path(sys.argv[1]).write_text('ready')\n"
        "    try:\n"
        "        time.sleep(60)\n"
        "    finally:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.5)\n"
        "        print('cleanup finished', flush=True)\n"
        "code = run(main)\n"
        "print('handler restored', signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)\n"
        "raise SystemExit(code)\n"))
    _wait_ready(tmp_path)
    command.send_signal(signal.SIGTERM)
    out, err = command.communicate(timeout=30)
    assert command.returncode == 143 and err == "terminated\n"
    assert out == "cleanup finished\nhandler restored True\n"
    (tmp_path / "ready").unlink()
    ignoring = _run_script(tmp_path, (
        "def main():\n"
        "    Path(sys.argv[1]).write_text('ready')\n"
        "    time.sleep(1.5)\n"
        "    print('finished', flush=True)\n"
        "raise SystemExit(run(main))\n"), preexec=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    _wait_ready(tmp_path)
    ignoring.send_signal(signal.SIGTERM)
    out, _ = ignoring.communicate(timeout=30)
    assert ignoring.returncode == 0 and out == "finished\n"


@pytest.mark.parametrize("kwargs, words", [
    ({"learning_rate": float("inf")}, "--lr must be a finite positive number, got inf"),
    ({"num_workers": -1}, "--num-workers must be a whole number >= 0"),
    ({"val_every": 0}, "--val-every must be at least 1, got 0"),
    ({"num_gpus": 0}, "--num-gpus must be at least 1, got 0"),
    ({"validation_checkpoint": "best", "final_validation": False}, "--checkpoint best .* no effect with "
                                                                   "--no-final-validation"),
])
def test_training_options_that_cannot_work_are_named(kwargs, words):
    """--lr inf trained to NaN weights and exited 0; --num-workers -1 passed as 0; --checkpoint best did nothing
    without a final validation; one message named --num-gpus and --val-every for either."""
    from hiennu.errors import HiennuError
    from hiennu.training.options import TrainingOptions
    with pytest.raises(HiennuError, match=words):
        TrainingOptions(dataset="D", **kwargs)
    assert TrainingOptions(dataset="D", num_workers=0, learning_rate=1e-3).num_workers == 0


@pytest.mark.parametrize("kwargs, words", [({"figure_cases": 0}, "--figure-cases must be a whole number >= 1"),
                                           ({"num_processes": 0}, "-np must be a whole number >= 1")])
def test_loss_study_options_that_cannot_work_are_named(kwargs, words):
    """--figure-cases 0 ran, said no validation case had a lesion and linked a slices.png it never drew."""
    from hiennu.errors import HiennuError
    from hiennu.study.loss_study import LossStudyOptions
    with pytest.raises(HiennuError, match=words):
        LossStudyOptions(dataset="D", **kwargs)


def test_nnunets_positional_dataset_and_folders(tmp_path, capsys):
    """nnUNetv2_find_best_configuration DATASET and nnUNetv2_evaluate_folder GT PRED, beside hiennu's flags."""
    import json

    import numpy as np

    from hiennu.cli import evaluate, find_best_configuration
    from hiennu.io.image import Geometry, write_image
    from hiennu.paths import use_roots

    geometry = Geometry((6, 5, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 1:4, 2:5] = 1
    write_image(mask, geometry, tmp_path / "gt" / "c1.mha")
    write_image(mask[:, :, ::-1].copy(), geometry, tmp_path / "pred" / "c1.mha")
    gt, pred = str(tmp_path / "gt"), str(tmp_path / "pred")
    assert evaluate.main([gt, pred, "-o", str(tmp_path / "a.json"), "-q"]) == 0
    assert evaluate.main(["-ref", gt, "-pred", pred, "-o", str(tmp_path / "b.json"), "-q"]) == 0
    a, b = (json.loads((tmp_path / n).read_text())["metrics"] for n in ("a.json", "b.json"))
    assert a == b and 0 < a["dice"]["mean"] < 1
    with pytest.raises(SystemExit):
        evaluate.main([gt, pred, "-ref", pred])
    assert "-ref " + pred + " and the positional " + gt + " both given" in capsys.readouterr().err
    # nnU-Net's parser reads options between the two folders, and one positional fills the flag left out
    assert evaluate.main([gt, "-np", "1", pred, "-o", str(tmp_path / "c.json"), "-q"]) == 0
    assert evaluate.main(["-ref", gt, pred, "-o", str(tmp_path / "d.json"), "-q"]) == 0
    for name in ("c.json", "d.json"):
        assert json.loads((tmp_path / name).read_text())["metrics"] == a
    with pytest.raises(SystemExit):
        evaluate.main([gt, pred, pred])
    assert "too many folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([gt])
    err = capsys.readouterr().err
    assert "required: -pred" in err and "was it read" not in err
    with pytest.raises(SystemExit):
        evaluate.main(["--cases", "c1", gt, pred])
    assert "was it read as a value of --cases?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--cases", "c1", "c2"])
    assert "was it read" not in capsys.readouterr().err
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert find_best_configuration.main(["7", "-c", "2d", "-q"]) == 1  # parsed; no dataset 7 there
        err = capsys.readouterr().err
        assert "7" in err and "required" not in err
        assert parser_of("find_best_configuration").parse_args(["-d", "7", "-c", "2d"]).dataset == "7"
        with pytest.raises(SystemExit):
            find_best_configuration.main(["-c", "2d"])
        err = capsys.readouterr().err
        assert "required: -d/--dataset" in err and "was it read" not in err
        with pytest.raises(SystemExit):  # the dataset read as a configuration: said so
            find_best_configuration.main(["-c", "2d", "7"])
        assert "was it read as a value of -c? An option that takes several values" in capsys.readouterr().err
        assert find_best_configuration.main(["-q", "-c", "2d", "--", "7"]) == 1  # as the hint says: parsed
        assert "required" not in capsys.readouterr().err
        with pytest.raises(SystemExit):  # folds are numbers, not a dataset read by mistake
            find_best_configuration.main(["-c", "2d", "-f", "0", "1"])
        assert "was it read" not in capsys.readouterr().err
        with pytest.raises(SystemExit):
            find_best_configuration.main(["7", "-d", "8", "-c", "2d"])
        assert "both given" in capsys.readouterr().err
        assert find_best_configuration.main(["7", "-d", "7", "-c", "2d", "-q"]) == 1  # spelled alike: one dataset
        assert "both given" not in capsys.readouterr().err


def test_commands_without_a_network_start_without_torch(tmp_path):
    """hiennu_evaluate and the post-processing commands never run a network; importing torch cost them ~1.4 s a run."""
    import subprocess
    import sys

    import numpy as np

    from hiennu.io.image import Geometry, write_image

    geometry = Geometry((6, 5, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 1:4, 2:5] = 1
    for folder in ("gt", "pred"):
        write_image(mask, geometry, tmp_path / folder / "c1.mha")
    script = ("import sys; from hiennu.cli import evaluate, determine_postprocessing, apply_postprocessing; "
              f"code = evaluate.main([{str(tmp_path / 'gt')!r}, {str(tmp_path / 'pred')!r}, '-q', '-np', '1']); "
              "determine_postprocessing.build_parser(); apply_postprocessing.build_parser(); "
              "print(code, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["0", "False"], run.stdout + run.stderr


def test_an_interrupted_command_says_how_to_go_on(capsys):
    from hiennu.cli import train_default_model
    from hiennu.cli._common import run

    def stopped():
        raise KeyboardInterrupt

    assert run(stopped, resume="run the same command again") == 130
    assert capsys.readouterr().err.strip() == "interrupted; run the same command again"
    assert run(stopped) == 130 and capsys.readouterr().err.strip() == "interrupted"
    import hiennu.pipeline.default_model as default_model
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(default_model, "train_default_model", lambda options: stopped())
        assert train_default_model.main(["-d", "BONBID", "-q"]) == 130
    assert "interrupted; run the same command again to go on: finished folds are kept" in capsys.readouterr().err
