"""The training flags that ``hiennu_train`` and ``hiennu_loss_study`` share: one per field of
:class:`~hiennu.training.options.TrainingOptions`.

Each flag's destination is its field's name, so ``TrainingOptions.from_args(args)`` reads them all
back. A new training option: a field in ``TrainingOptions`` and its line below.
"""

from __future__ import annotations

import argparse
from typing import Any, Collection, Mapping

from hiennu.cli._common import add_alias, add_device, add_plans_name
from hiennu.io.checkpoint import CHECKPOINT_CHOICES, DEFAULT_CHECKPOINT_CHOICE


def add_training_arguments(parser: argparse.ArgumentParser, exclude: Collection[str] = (),
                           help: Mapping[str, str] | None = None) -> None:
    """Add the flag of every ``TrainingOptions`` field but ``dataset`` and ``fold`` (each command
    names those its own way) and those in ``exclude``; ``help`` replaces some fields' help texts."""
    texts = dict(help or {})

    def add(name: str, *flags: str, alias: str | None = None, **kwargs: Any) -> None:
        if name in exclude:
            return
        kwargs["help"] = texts.pop(name, kwargs["help"])
        parser.add_argument(*flags, dest=name, **kwargs)
        if alias is not None:  # nnU-Net's spelling
            add_alias(parser, alias, dest=name, **{k: v for k, v in kwargs.items() if k in ("type", "action")})

    add("configuration", "-c", "--configuration", default=None,
        help="plans configuration (default: the plans' default)")
    if "plans_name" not in exclude:
        add_plans_name(parser, texts.pop("plans_name", "plans identifier (-p of hiennu_plan_and_preprocess): reads "
                                                       "NAME.json, trains into TRAINER__NAME__CONFIG"))
    add("epochs", "--epochs", type=int, default=None, help="maximum epochs (default: the plans')")
    add("patience", "--patience", type=int, default=None,
        help="stop after this many epochs without improvement of validation Dice (default: the plans')")
    add("batch_size", "--batch-size", type=int, default=None, help="global batch size (default: the plans')")
    add("learning_rate", "--lr", type=float, default=None, metavar="LR",
        help="initial learning rate (default: the plans')")
    add("iterations_per_epoch", "--iterations-per-epoch", type=int, default=None,
        help="steps per epoch (default: the plans'; none there: one pass over the training cases)")
    add("num_workers", "--num-workers", type=int, default=None,
        help="data-augmentation worker processes (default: the plans', 2)")
    if "device" not in exclude:
        add_device(parser)
    add("num_gpus", "--num-gpus", type=int, default=1, alias="-num_gpus",
        help="data-parallel processes (DDP; NCCL on GPUs, gloo on CPU); the batch is split across them")
    add("compile", "--compile", action="store_true", help="torch.compile the network")
    add("resume", "--continue", action="store_true", alias="--c",
        help="resume an interrupted run exactly where it stopped (a finished run: nothing to do)")
    add("seed", "--seed", type=int, default=12345, help="random seed")
    add("cpu_bf16", "--cpu-bf16", action="store_const", const=True, default=None,
        help="on a CPU, train under bfloat16 autocast (the plans' training.cpu_bf16): about 2.6x faster steps on "
             "CPUs with native bf16 (AVX512-BF16, AMX), not bit-identical to float32")
    add("cpu_threads", "--cpu-threads", type=int, default=None,
        help="torch threads on a CPU (default: one per core); 1 can be faster on 2 cores shared with the "
             "augmentation workers or other jobs (documentation/benchmarks.md)")
    add("time_budget_minutes", "--time-budget", type=float, default=None, metavar="MIN",
        help="wall-clock budget of the training loop in minutes (the plans' training.time_budget_minutes): the "
             "poly learning rate decays on the fraction of it spent, and training stops at the end of the epoch "
             "in which it ran out, however many epochs are left")
    add("val_every", "--val-every", type=int, default=1, help="validate every N epochs")
    add("final_validation", "--no-final-validation", action="store_false",
        help="skip predicting and scoring the validation cases in native geometry at the end")
    add("validation_checkpoint", "--checkpoint", choices=sorted(CHECKPOINT_CHOICES), default=DEFAULT_CHECKPOINT_CHOICE,
        help="the checkpoint that predicts the fold's validation cases at the end (the cross-validation masks): "
             "final (default, as nnU-Net) or best (chosen by validation Dice on those same cases, so its scores "
             "flatter it); validation/summary.json records which")
    if "validation_checkpoint" not in exclude:  # nnU-Net's --val_best
        add_alias(parser, "--val_best", dest="validation_checkpoint", action="store_const", const="best")
    add("validation_only", "--val", action="store_true",
        help="do not train: re-run only the final validation of a finished fold (nnU-Net's --val), e.g. with "
             "another --checkpoint")
    add("save_probabilities", "--npz", action="store_true",
        help="the final validation also keeps each case's sigmoid probabilities in native geometry as "
             "fold_K/validation/CASE.npz (nnU-Net's --npz), which hiennu_find_best_configuration averages to score "
             "ensembles of configurations; with --val, re-validates a finished fold to keep them")
    add("split_seed", "--split-seed", type=int, default=None, metavar="S",
        help="folds from the stratified split with seed S (splits_seed{S}.json, written from "
             "dataset_fingerprint.json when absent; splits_final.json, seed 12345, is never rewritten); models "
             "go to $hiennu_results/DatasetNNN_Name/split_seed_S/ (default: splits_final.json)")
    if texts:
        raise ValueError(f"help given for options that were not added: {', '.join(texts)}")
