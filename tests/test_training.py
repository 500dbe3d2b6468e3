"""Training loop: the six trainers on a tiny preprocessed dataset, outputs, errors, NaN stop, determinism."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.training.trainers import BUILTIN_TRAINERS
from helpers import DATASET, GRID_ZYX, fold_dir, load, make_tiny_dataset, options, tiny_plans, write_module


@pytest.fixture(params=["grid", "patch"])
def tiny(hiennu_roots, request):
    """The tiny dataset as a whole-volume grid configuration and as a patch configuration."""
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], patch=request.param == "patch")
    return hiennu_roots


ALL_TRAINERS = list(BUILTIN_TRAINERS)


def test_builtin_trainers_come_from_the_loss_registry():
    from hiennu.losses import LOSSES
    from hiennu.training import trainers
    assert len(trainers.TRAINER_LOSSES) == 7 and len(ALL_TRAINERS) == 8  # plus the rule-component target trainer
    for short, loss in trainers.TRAINER_LOSSES.items():
        cls = getattr(trainers, f"Trainer{short}")
        assert BUILTIN_TRAINERS[f"Trainer{short}"] is cls and cls.__module__ == "hiennu.training.trainers"
        assert type(cls.build_loss(None)) is LOSSES[loss]
    assert ALL_TRAINERS == ["TrainerDice", "TrainerDiceFocal", "TrainerTversky", "TrainerHDT", "TrainerDiceFocalHDT",
                            "TrainerTverskyHDT", "TrainerBlobDiceFocal", "TrainerDiceFocalRuleComponents"]
    rule_components = BUILTIN_TRAINERS["TrainerDiceFocalRuleComponents"]
    assert issubclass(rule_components, BUILTIN_TRAINERS["TrainerDiceFocal"])
    assert type(rule_components.build_loss(None)) is LOSSES["DiceFocal"]
    # the loss study's default trainers are the paper's six; the blob loss joins only when named
    from hiennu.study.loss_study import STUDY_TRAINERS
    assert STUDY_TRAINERS == tuple(ALL_TRAINERS[:6])
    # a new loss is one registry line: its trainer follows, after the others
    assert list(trainers.trainer_losses({**LOSSES, "Mine": object}).items())[-1] == ("Mine", "Mine")


@pytest.mark.parametrize("trainer", ALL_TRAINERS)
def test_each_trainer_trains_two_epochs_and_writes_its_outputs(tiny, trainer):
    from hiennu.training.launch import train
    out = train(options(), trainer)
    assert out == fold_dir(tiny["hiennu_results"], trainer)
    model_dir = out.parent
    assert (model_dir / "plans.json").is_file() and (model_dir / "dataset.json").is_file()
    assert not (out / "checkpoint_latest.pth").exists()  # removed once checkpoint_final.pth is written
    for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
        state = load(out / name)  # weights_only=True: no pickled objects
        assert state["trainer_name"] == trainer and state["fold"] == 0
        assert "optimizer_state" not in state  # only an unfinished run's latest checkpoint needs it
        assert all(torch.isfinite(v).all() for v in state["network_weights"].values() if v.is_floating_point())
    final = load(out / "checkpoint_final.pth")
    assert final["epoch"] == 1 and final["finished"] is True
    progress = json.loads((out / "progress.json").read_text())
    assert progress["epoch"] == [0, 1]
    assert all(math.isfinite(v) for v in progress["train_loss"])
    assert all(0.0 <= d <= 1.0 for d in progress["val_dice"])
    # learning rate decays by 0.9 per epoch from the plans' 1e-3
    assert progress["lr"] == pytest.approx([1e-3, 0.9e-3])
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "training_log.txt").read_text()
    assert "epoch 0: train loss" in log and "epoch 1: train loss" in log
    debug = json.loads((out / "debug.json").read_text())
    assert debug["seed"] == 7 and debug["device"] == "cpu" and debug["versions"]["torch"] == torch.__version__
    assert debug["val_cases"] == ["case_000", "case_005"]


def test_seeded_cpu_runs_are_identical_and_the_seed_matters(tiny):
    from hiennu.training.launch import train
    import shutil
    a = load(train(options(epochs=1, iterations_per_epoch=1), "TrainerDice") / "checkpoint_final.pth")["network_weights"]
    shutil.rmtree(fold_dir(tiny["hiennu_results"], "TrainerDice", 0))
    a2 = load(train(options(epochs=1, iterations_per_epoch=1), "TrainerDice") / "checkpoint_final.pth")["network_weights"]
    shutil.rmtree(fold_dir(tiny["hiennu_results"], "TrainerDice", 0))
    c = load(train(options(epochs=1, iterations_per_epoch=1, seed=8), "TrainerDice") / "checkpoint_final.pth")["network_weights"]
    assert all(torch.equal(a[k], a2[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_trained_fold_is_not_overwritten_and_continue_of_a_finished_run_does_nothing(tiny):
    from hiennu.training.launch import train
    out = train(options(epochs=1), "TrainerDice")
    before = (out / "checkpoint_final.pth").read_bytes()
    with pytest.raises(HiennuError, match="already holds a training.*--continue"):
        train(options(epochs=1), "TrainerDice")
    train(options(epochs=1, resume=True), "TrainerDice")
    assert (out / "checkpoint_final.pth").read_bytes() == before


@pytest.mark.filterwarnings("ignore:Data has no positive values")  # lr 0 on the log axis
def test_early_stopping_after_patience_epochs_without_improvement(tiny, tmp_path):
    from hiennu.training.launch import train
    # a model whose validation Dice never changes: lr 0 leaves the weights alone
    mod = write_module(tmp_path, "frozen_trainers", """
        import torch
        from hiennu.training.trainers import TrainerDice
        class TrainerFrozen(TrainerDice):
            def build_optimizer(self, params):
                opt, sched = super().build_optimizer(params)
                for g in opt.param_groups:
                    g["lr"] = 0.0
                    g["weight_decay"] = 0.0
                return opt, sched
            def _train_step(self, data, target):
                self.network.eval()
                with torch.no_grad():
                    loss = self.compute_loss(self.network(data), target)
                self.network.train()
                self.optimizer.step()  # no gradients: changes nothing
                return loss
        """)
    out = train(options(epochs=10, patience=2, iterations_per_epoch=1), f"{mod}:TrainerFrozen")
    progress = json.loads((out / "progress.json").read_text())
    assert progress["epoch"] == [0, 1, 2]  # best at epoch 0, no improvement in epochs 1 and 2
    assert load(out / "checkpoint_best.pth")["epoch"] == 0
    assert "early stopping" in (out / "training_log.txt").read_text()


def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    from hiennu.training.launch import train
    from hiennu.training.trainer import TrainingDivergedError
    mod = write_module(tmp_path, "nan_trainers", """
        import torch
        from hiennu.losses import DiceLoss
        from hiennu.training.trainer import Trainer
        class TrainerNaN(Trainer):
            def build_loss(self):
                dice, calls = DiceLoss(), [0]
                def loss(logits, target):
                    calls[0] += 1
                    value = dice(logits, target)
                    # 2 training batches per epoch + 2 validation cases: call 6 is epoch 1, batch 1
                    return value * float("nan") if calls[0] == 6 else value
                return loss
        """)
    with pytest.raises(TrainingDivergedError) as err:
        train(options(epochs=3, iterations_per_epoch=2), f"{mod}:TrainerNaN")
    out = fold_dir(tiny["hiennu_results"], "TrainerNaN")
    assert "the training loss became nan at epoch 1, batch 1" in str(err.value) and str(out) in str(err.value)
    state = load(out / "checkpoint_latest.pth")
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["network_weights"].values() if v.is_floating_point())
    assert not (out / "checkpoint_final.pth").exists()


def test_unknown_trainer_lists_the_known_ones(tiny):
    from hiennu.training.trainers import get_trainer_class
    with pytest.raises(HiennuError) as err:
        get_trainer_class("TrainerNope")
    for name in ALL_TRAINERS:
        assert name in str(err.value)
    assert "--trainer-module" in str(err.value)
    with pytest.raises(HiennuError, match="cannot be imported"):
        get_trainer_class("X", "no_such_module_xyz")
    with pytest.raises(HiennuError, match="no trainer class 'Nope'.*TrainerDice"):
        get_trainer_class("hiennu.training.trainers:Nope")


def test_user_trainer_in_its_own_module_with_trainer_module_option(tiny, tmp_path):
    from hiennu.cli.train import main
    mod = write_module(tmp_path, "my_trainers", """
        from hiennu.losses import TverskyLoss
        from hiennu.training.trainer import Trainer
        class MyTrainer(Trainer):
            def build_loss(self):
                return TverskyLoss()
        """)
    code = main(["Tiny", "MyTrainer", "0", "--trainer-module", mod, "--epochs", "1", "--device", "cpu",
                 "--num-workers", "0", "--no-final-validation", "-q"])
    assert code == 0
    assert load(fold_dir(tiny["hiennu_results"], "MyTrainer") / "checkpoint_final.pth")["trainer_name"] == "MyTrainer"


def test_cli_reports_bad_input_without_writing(tiny, capsys):
    from hiennu.cli.train import main
    assert main(["Tiny", "TrainerNope", "0", "-q"]) == 1
    assert "unknown trainer 'TrainerNope'" in capsys.readouterr().err
    assert main(["Tiny", "TrainerDice", "7", "--device", "cpu", "-q"]) == 1
    assert "fold must be 0-4 or 'all'" in capsys.readouterr().err
    assert main(["Tiny", "TrainerDice", "0", "--device", "cpu", "--num-gpus", "3", "-q"]) == 1
    assert "cannot be split evenly" in capsys.readouterr().err
    assert not (tiny["hiennu_results"] / DATASET).exists()


def test_missing_split_file_and_missing_cases_name_the_file(tiny):
    from hiennu.training.trainers import TrainerDice
    root = tiny["hiennu_preprocessed"] / DATASET
    (root / "3d_fullres" / "case_001.npy").unlink()
    with pytest.raises(HiennuError, match=r"3d_fullres: preprocessed files missing for case\(s\) case_001"):
        TrainerDice(options())
    (root / "splits_final.json").unlink()
    with pytest.raises(HiennuError, match="splits_final.json: not found"):
        TrainerDice(options())


def test_deep_supervision_weights_halve_and_targets_are_downsampled(hiennu_roots):
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], deep_supervision=True)
    from hiennu.training.trainer import Trainer

    class MeanTarget(Trainer):
        def build_loss(self):
            return lambda logits, target: target.mean() + 0 * logits.sum()

    trainer = MeanTarget(options())
    trainer.loss = trainer.build_loss()
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2, :2, :2] = 1  # mean 1/8 at full resolution; one voxel of 8 at half
    target[..., 0, 0, 0] = 0
    outputs = [torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 1, 1, 1)]
    # nearest down-sampling picks voxel (0,0,0) of each block: 0 at half and quarter resolution
    expected = (1.0 * (7 / 64) + 0.5 * 0.0 + 0.25 * 0.0) / 1.75
    assert float(trainer.compute_loss(outputs, target)) == pytest.approx(expected)
    target[..., 0, 0, 0] = 1
    expected = (1.0 * (8 / 64) + 0.5 * (1 / 8) + 0.25 * 1.0) / 1.75
    assert float(trainer.compute_loss(outputs, target)) == pytest.approx(expected)


def test_deep_supervision_network_trains(hiennu_roots):
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], deep_supervision=True)
    from hiennu.training.launch import train
    out = train(options(epochs=1), "TrainerDice")
    assert json.loads((out / "progress.json").read_text())["epoch"] == [0]


def test_l1_penalty_is_added_to_the_gradient(tiny):
    from hiennu.training.trainers import TrainerDice
    trainer = TrainerDice(options())
    trainer._setup()
    trainer.training.grad_clip_norm = 0
    data = torch.zeros(1, 2, *GRID_ZYX)
    target = torch.zeros(1, 1, *GRID_ZYX)
    trainer.optimizer.step = lambda: None  # keep the weights, inspect the gradients
    trainer.training.l1_lambda = 0.0
    trainer._train_step(data, target)
    used = [p for p in trainer.params if p.grad is not None]  # heads of unused scales get no gradient
    g0 = [p.grad.clone() for p in used]
    trainer.training.l1_lambda = 1e-4
    trainer._train_step(data, target)
    assert len(used) > 20
    for p, g in zip(used, g0):
        torch.testing.assert_close(p.grad, g + 1e-4 * torch.sign(p.detach()))


def test_rng_state_round_trip_and_global_batchnorm_without_group_is_batchnorm():
    import random
    from hiennu.training.checkpoint import capture_rng_state, restore_rng_state
    from hiennu.training.distributed import GlobalBatchNorm3d
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
    bn, gbn = torch.nn.BatchNorm3d(3), GlobalBatchNorm3d(3)
    x = torch.randn(2, 3, 4, 4, 4)
    torch.testing.assert_close(bn(x), gbn(x))


def test_checkpoint_load_errors_name_the_file(tmp_path):
    from hiennu.io.checkpoint import load_checkpoint, save_checkpoint
    with pytest.raises(HiennuError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(HiennuError, match=f"{bad}: cannot be read"):
        load_checkpoint(bad)
    save_checkpoint({"network_weights": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "ok.pth")
    assert load_checkpoint(tmp_path / "ok.pth")["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "ok.pth"]  # no temporary left over


def make_tiny_raw_dataset(raw_root: Path, n_cases: int = 6) -> Path:
    """Raw images + labels for the tiny dataset, on a native grid (20, 40, 36) zyx unlike the 16x32x32 grid."""
    from hiennu.io.image import Geometry, write_image
    root = raw_root / DATASET
    save_dataset_json(DatasetJson(name="Tiny", num_training=n_cases), root / "dataset.json")
    geometry = Geometry((36, 40, 20), (1.2, 1.1, 2.5), (-10.0, 5.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    rng = np.random.default_rng(1)
    for i in range(n_cases):
        case = f"case_{i:03d}"
        lesion = np.zeros(geometry.size_zyx, np.uint8)
        lesion[8:13, 15:25, 12:20] = 1
        adc = rng.normal(1400, 100, geometry.size_zyx).astype(np.float32)
        adc[lesion == 1] = 600
        zadc = rng.normal(0, 1, geometry.size_zyx).astype(np.float32)
        zadc[lesion == 1] = -4
        write_image(adc, geometry, root / "imagesTr" / f"{case}_0000.mha")
        write_image(zadc, geometry, root / "imagesTr" / f"{case}_0001.mha")
        write_image(lesion, geometry, root / "labelsTr" / f"{case}.mha")
    return root


def test_final_validation_predicts_in_native_geometry_and_scores(tiny):
    from hiennu.io.image import read_image
    from hiennu.training.launch import train
    raw = make_tiny_raw_dataset(tiny["hiennu_raw"])
    out = train(options(epochs=1, final_validation=True), "TrainerDice")
    validation = out / "validation"
    for case in ("case_000", "case_005"):
        mask, geometry = read_image(validation / f"{case}.mha", dtype=None)
        _, reference = read_image(raw / "labelsTr" / f"{case}.mha", dtype=None)
        assert mask.shape == (20, 40, 36) and set(np.unique(mask)) <= {0, 1}
        assert geometry.spacing_xyz == reference.spacing_xyz and geometry.origin_xyz == reference.origin_xyz
    summary = json.loads((validation / "summary.json").read_text())
    assert summary["num_cases"] == 2 and 0 <= summary["metrics"]["dice"]["mean"] <= 1
    assert summary["checkpoint"] == "checkpoint_final.pth"   # the default, as nnU-Net: not the one chosen on these cases
    assert "validation in native geometry with checkpoint_final.pth (2 cases" in (out / "training_log.txt").read_text()


def test_val_reruns_only_the_final_validation_with_the_chosen_checkpoint(tiny):
    from hiennu.training.launch import train
    from hiennu.training.native_validation import validated_checkpoint, validation_keeps_probabilities
    make_tiny_raw_dataset(tiny["hiennu_raw"])
    with pytest.raises(HiennuError, match="--val: .*has no checkpoint_final.pth"):
        train(options(epochs=1, final_validation=True, validation_only=True), "TrainerDice")  # none trained
    out = train(options(epochs=1, final_validation=True), "TrainerDice")
    final_weights = load(out / "checkpoint_final.pth")["network_weights"]
    train(options(epochs=1, final_validation=True, validation_only=True, validation_checkpoint="best"), "TrainerDice")
    assert validated_checkpoint(out) == "checkpoint_best.pth"
    assert "validating (--val, no training)" in (out / "training_log.txt").read_text()
    assert all(torch.equal(v, load(out / "checkpoint_final.pth")["network_weights"][k])
               for k, v in final_weights.items())                            # nothing was trained
    # continuing a finished fold re-validates when its masks came from another checkpoint than asked for
    train(options(epochs=1, final_validation=True, resume=True), "TrainerDice")
    assert validated_checkpoint(out) == "checkpoint_final.pth"
    # a validation that kept its probabilities (--npz) keeps them when validated again without --npz
    train(options(epochs=1, final_validation=True, validation_only=True, save_probabilities=True), "TrainerDice")
    kept = sorted(p.name for p in (out / "validation").glob("*.npz"))
    assert kept and validation_keeps_probabilities(out)
    train(options(epochs=1, final_validation=True, validation_only=True, validation_checkpoint="best"), "TrainerDice")
    assert sorted(p.name for p in (out / "validation").glob("*.npz")) == kept and validation_keeps_probabilities(out)
    assert "kept again" in (out / "training_log.txt").read_text()
    with pytest.raises(HiennuError, match="--val re-runs the final validation of a fold 0-4"):
        options(epochs=1, validation_only=True, final_validation=False)
    with pytest.raises(HiennuError, match="checkpoint 'latest'"):
        options(validation_checkpoint="latest")


def test_final_validation_without_raw_data_warns_and_keeps_the_training(tiny):
    from hiennu.training.launch import train
    out = train(options(epochs=1, final_validation=True), "TrainerDice")
    assert (out / "checkpoint_final.pth").is_file() and not (out / "validation").exists()
    log = (out / "training_log.txt").read_text()
    assert "final validation skipped: the raw dataset" in log
    assert "restore it, then validate the fold: hiennu_train Tiny TrainerDice 0 -c 3d_fullres --val" in log


def test_a_validation_case_missing_in_the_raw_dataset_is_named_before_training(tiny):
    """A raw channel removed after preprocessing stopped the final validation after the whole fold had trained,
    with no fix; it is named before the first step."""
    from hiennu.training.fold_layout import fold_layout
    from hiennu.training.launch import train
    raw = make_tiny_raw_dataset(tiny["hiennu_raw"])
    case = fold_layout("TrainerDice", options(epochs=1)).val_cases[0]
    (raw / "imagesTr" / f"{case}_0001.mha").unlink()
    with pytest.raises(HiennuError, match=rf"case {case}, a validation case of this fold: {case}_0001\.mha \(ZADC\) "
                                          r"missing in .*restore the file\(s\), or train with --no-final-validation"):
        train(options(epochs=1, final_validation=True), "TrainerDice")
    assert not (tiny["hiennu_results"] / DATASET / "TrainerDice__hiennuPlans__3d_fullres" / "fold_0").exists()
    train(options(epochs=1, final_validation=False), "TrainerDice")  # as the error says


@pytest.mark.slow
def test_training_benchmark_script_runs_tiny_on_cpu(tmp_path):
    import subprocess
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_gpu.py"
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(script), "--synthetic", "6", "--device", "cpu", "--grid", "32", "32", "16",
                           "--features", "4", "8", "16", "32", "--epochs", "2", "--repeats", "2",
                           "--work", str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["epochs_run"] == 2 and result["network_only"]["flops_per_step"] > 0
    assert 0 <= result["data_wait_fraction_mean"] <= 1 and result["step_seconds_median"] > 0


def _set_training_plan(preprocessed: Path, **values) -> None:
    path = preprocessed / DATASET / "plans.json"
    plans = json.loads(path.read_text())
    for config in plans["configurations"].values():
        config["training"].update(values)
    path.write_text(json.dumps(plans))


def test_a_time_budget_stops_training_and_the_poly_rate_decays_on_the_time_spent(tiny, tmp_path):
    from hiennu.training.launch import train
    _set_training_plan(tiny["hiennu_preprocessed"], lr_schedule="poly")
    mod = write_module(tmp_path, "slow_trainers", """
        import time
        from hiennu.training.trainers import TrainerDice
        class TrainerSlow(TrainerDice):
            def _train_step(self, data, target):
                time.sleep(0.05)
                return super()._train_step(data, target)
        """)
    budget_min = 0.6 / 60
    out = train(options(epochs=50, patience=50, iterations_per_epoch=2, time_budget_minutes=budget_min),
                f"{mod}:TrainerSlow")
    progress = json.loads((out / "progress.json").read_text())
    seconds, lrs = progress["epoch_seconds"], progress["lr"]
    n = len(progress["epoch"])
    assert 1 <= n < 50  # stopped by the budget, long before max_epochs
    assert sum(seconds[:-1]) < 60 * budget_min <= sum(seconds)  # at the end of the epoch in which it ran out
    for e in range(n):  # lr = lr0 (1 - max(e / max_epochs, spent / budget)) ** 0.9, spent before epoch e
        spent = max(e / 50, sum(seconds[:e]) / (60 * budget_min))
        assert lrs[e] == pytest.approx(lrs[0] * max(0.0, 1 - spent) ** 0.9, rel=1e-9)
    assert progress["val_dice"][-1] is not None  # the last epoch validated
    assert (out / "checkpoint_final.pth").is_file()
    log_text = (out / "training_log.txt").read_text()
    assert "time budget of" in log_text and "early stopping" not in log_text


def test_without_a_budget_the_poly_rate_follows_the_epochs(tiny):
    from hiennu.training.launch import train
    _set_training_plan(tiny["hiennu_preprocessed"], lr_schedule="poly")
    out = train(options(epochs=4, iterations_per_epoch=1), "TrainerDice")
    lrs = json.loads((out / "progress.json").read_text())["lr"]
    assert lrs == pytest.approx([lrs[0] * (1 - e / 4) ** 0.9 for e in range(4)], rel=1e-9)


@pytest.mark.parametrize("budget", [0, -1.0])
def test_a_time_budget_must_be_positive(budget):
    with pytest.raises(HiennuError, match="--time-budget"):
        options(time_budget_minutes=budget)


def test_plans_with_a_non_positive_time_budget_name_the_field():
    from hiennu.plans import PlansError, TrainingPlan, plans_from_dict
    d = dataclasses.asdict(tiny_plans())
    for config in d["configurations"].values():
        config["training"]["time_budget_minutes"] = 0
    with pytest.raises(PlansError, match="time_budget_minutes"):
        plans_from_dict(d)
    assert TrainingPlan().time_budget_minutes is None


def test_an_interrupted_training_says_in_its_log_how_to_resume_and_has_drawn_its_progress(tiny, monkeypatch):
    """Ctrl-C printed one bare word and left nothing in training_log.txt; progress.png was first drawn a minute into
    the run, so a fold interrupted sooner had none."""
    from hiennu.training.launch import train
    from hiennu.training.trainer import Trainer
    real, calls = Trainer._run_epoch, []

    def interrupted(self, batches, epoch):
        calls.append(epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batches, epoch)

    monkeypatch.setattr(Trainer, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(options(epochs=4), "TrainerDice")
    out = fold_dir(tiny["hiennu_results"], "TrainerDice")
    assert "interrupted after 1 epoch(s); the last finished epoch's checkpoint is kept: resume it by running the " \
           "same hiennu_train command again with --continue" in (out / "training_log.txt").read_text()
    assert (out / "progress.png").is_file() and (out / "checkpoint_latest.pth").is_file()
    monkeypatch.setattr(Trainer, "_run_epoch", real)
    train(options(epochs=4, resume=True), "TrainerDice")  # as the log says
    assert (out / "checkpoint_final.pth").is_file()


def test_a_finished_fold_is_validated_again_after_the_plans_were_edited(tiny):
    """--val and --continue of a finished fold train nothing (they predict from the raw images with the fold's own
    plans and checkpoint), so plans edited since no longer stop them ("preprocessed under other plans", "continuing
    would mix them")."""
    from hiennu.training.launch import train
    from hiennu.training.native_validation import validated_checkpoint
    make_tiny_raw_dataset(tiny["hiennu_raw"])
    out = train(options(epochs=1, final_validation=True), "TrainerDice")
    before = json.loads((out / "validation" / "summary.json").read_text())["metrics"]["dice"]["mean"]
    plans_path = tiny["hiennu_preprocessed"] / DATASET / "plans.json"
    plans = json.loads(plans_path.read_text())
    for config in plans["configurations"].values():
        config["normalization"][0]["mean"] = config["normalization"][0].get("mean", 0.0) + 50.0
    plans_path.write_text(json.dumps(plans))
    train(options(epochs=1, final_validation=True, validation_only=True, validation_checkpoint="best"), "TrainerDice")
    assert validated_checkpoint(out) == "checkpoint_best.pth"
    train(options(epochs=1, final_validation=True, resume=True), "TrainerDice")  # re-validates with final
    assert validated_checkpoint(out) == "checkpoint_final.pth"
    assert json.loads((out / "validation" / "summary.json").read_text())["metrics"]["dice"]["mean"] == before


def test_a_fold_holding_only_its_best_checkpoint_is_told_what_works(tiny):
    """--continue refuses to start over from checkpoint_best.pth alone, so the errors no longer point to it."""
    from hiennu.training.launch import train
    out = train(options(epochs=1), "TrainerDice")
    (out / "checkpoint_final.pth").unlink()
    for opts in (options(epochs=1), options(epochs=1, validation_only=True, final_validation=True)):
        with pytest.raises(HiennuError, match="it holds only checkpoint_best.pth, which cannot be continued: put back "
                                              "checkpoint_latest.pth and resume with --continue, or move the folder"):
            train(opts, "TrainerDice")


def test_an_interrupted_revalidation_keeps_the_probabilities_and_a_finished_fold_needs_no_raw_check(tiny, monkeypatch):
    """Found reviewing the late changes: a re-validation interrupted after it removed its summary lost the kept
    probabilities on the next run without --npz; the raw pre-flight refused a --continue with nothing to do; a finished
    fold continued under edited plans rewrote the model's missing plans.json from the edited plans."""
    from hiennu.inference.predictor import Predictor
    from hiennu.training.launch import train
    from hiennu.training.native_validation import validation_keeps_probabilities
    raw = make_tiny_raw_dataset(tiny["hiennu_raw"])
    out = train(options(epochs=1, final_validation=True, save_probabilities=True), "TrainerDice")
    kept = sorted(p.name for p in (out / "validation").glob("*.npz"))
    real = Predictor.predict_folder

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "predict_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(options(epochs=1, final_validation=True, validation_only=True, validation_checkpoint="best"),
              "TrainerDice")
    monkeypatch.setattr(Predictor, "predict_folder", real)
    assert not (out / "validation" / "summary.json").exists() and validation_keeps_probabilities(out)
    train(options(epochs=1, final_validation=True, validation_only=True), "TrainerDice")  # no --npz
    assert sorted(p.name for p in (out / "validation").glob("*.npz")) == kept and validation_keeps_probabilities(out)
    case = sorted(kept)[0][:-len(".npz")]
    (raw / "imagesTr" / f"{case}_0001.mha").unlink()  # finished and validated: --continue has nothing to do
    train(options(epochs=1, final_validation=True, resume=True, save_probabilities=True), "TrainerDice")
    (out.parent / "plans.json").unlink()
    plans_path = tiny["hiennu_preprocessed"] / DATASET / "plans.json"
    plans = json.loads(plans_path.read_text())
    for config in plans["configurations"].values():
        config["network"]["negative_slope"] = 0.2
    plans_path.write_text(json.dumps(plans))
    with pytest.raises(HiennuError):  # re-validation needs the model's plans; nothing is written from the edited ones
        train(options(epochs=1, final_validation=True, resume=True, validation_checkpoint="best"), "TrainerDice")
    assert not (out.parent / "plans.json").exists()


def test_a_raw_dataset_without_its_dataset_json_still_validates_the_fold(tiny):
    """The raw pre-flight read the raw dataset.json, which the final validation does not need (the model keeps its
    own), and refused every training of such a dataset."""
    from hiennu.training.launch import train
    raw = make_tiny_raw_dataset(tiny["hiennu_raw"])
    (raw / "dataset.json").unlink()
    out = train(options(epochs=1, final_validation=True), "TrainerDice")
    assert (out / "validation" / "summary.json").is_file()
