"""``hiennu_train DATASET TRAINER [FOLD]`` (or ``DATASET -tr TRAINER [-c CONFIG] [FOLD]``): train one fold."""

from __future__ import annotations

import argparse
import re

from hiennu.cli._common import add_alias, add_device, add_plans_name, make_parser, run

# nnU-Net's configuration names and hiennu's: a "trainer" spelled like one is a configuration
_CONFIGURATION_RE = re.compile(r"^(2d|3d)(_[A-Za-z0-9_]+)?$")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "hiennu_train",
        "Train the plans' 3D U-Net on one fold of a preprocessed dataset with the loss the trainer names. "
        "Output: $hiennu_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG/fold_K/.\n"
        "The trainer is the second positional argument or -tr TRAINER (nnU-Net's order: DATASET -c CONFIG "
        "-tr TRAINER FOLD).")
    p.usage = "%(prog)s DATASET [TRAINER] [FOLD] [-tr TRAINER] [-c CONFIGURATION] [-p NAME] [options]"
    p.add_argument("dataset", help="dataset name (BONBID), folder name (Dataset001_BONBID) or number (1)")
    p.add_argument("positional", nargs="*", metavar="[TRAINER] [FOLD]",
                   help="trainer (TrainerDice, TrainerDiceFocal, TrainerTversky, TrainerHDT, TrainerDiceFocalHDT, "
                        "TrainerTverskyHDT, or your own as MODULE:CLASS) unless -tr names it, then the fold: "
                        "0-4 or 'all' (default 0)")
    p.add_argument("-tr", "--trainer", dest="trainer_option", default=None, metavar="TRAINER",
                   help="trainer class, instead of the positional TRAINER")
    p.add_argument("-c", "--configuration", default=None, help="plans configuration (default: the plans' default)")
    add_plans_name(p, "plans identifier (-p of hiennu_plan_and_preprocess): reads NAME.json, trains into "
                      "TRAINER__NAME__CONFIG")
    p.add_argument("--trainer-module", default=None, help="importable module that defines TRAINER")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the plans', 100)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without improvement of validation Dice (default: the plans', 10)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the plans', 4)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the plans', 1e-3)")
    p.add_argument("--iterations-per-epoch", type=int, default=None,
                   help="steps per epoch (default: the plans', one pass over the training cases)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data-augmentation worker processes (default: the plans', 2)")
    add_device(p)
    p.add_argument("--num-gpus", type=int, default=1,
                   help="data-parallel processes (DDP; NCCL on GPUs, gloo on CPU); the batch is split across them")
    add_alias(p, "-num_gpus", dest="num_gpus", type=int)
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="resume an interrupted run exactly where it stopped (a finished run: nothing to do)")
    add_alias(p, "--c", dest="resume", action="store_true")
    p.add_argument("--seed", type=int, default=12345, help="random seed")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--no-final-validation", dest="final_validation", action="store_false",
                   help="skip predicting and scoring the validation cases in native geometry at the end")
    return p


def trainer_and_fold(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str]:
    """The trainer and fold from the positionals and ``-tr``; a configuration given as trainer is an error."""
    rest = list(args.positional)
    if args.trainer_option is not None:
        if len(rest) == 2 and _CONFIGURATION_RE.match(rest[0]):
            parser.error(f"{rest[0]!r} looks like a configuration: did you mean -c {rest[0]}?")
        if len(rest) > 1:
            parser.error(f"with -tr, give at most the fold after the dataset, got {' '.join(rest)}")
        trainer, fold = args.trainer_option, (rest[0] if rest else "0")
    else:
        if not rest:
            parser.error("name the trainer: hiennu_train DATASET TRAINER [FOLD], or -tr TRAINER")
        if len(rest) > 2:
            parser.error(f"too many positional arguments: {' '.join(rest)} (DATASET TRAINER [FOLD])")
        trainer, fold = rest[0], (rest[1] if len(rest) == 2 else "0")
    if _CONFIGURATION_RE.match(trainer):
        parser.error(f"{trainer!r} is a configuration, not a trainer: did you mean -c {trainer}? "
                     f"(e.g. hiennu_train {args.dataset} TrainerTverskyHDT {fold} -c {trainer})")
    return trainer, fold


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    trainer, fold = trainer_and_fold(parser, args)

    def go() -> None:
        from hiennu.training.launch import train
        from hiennu.training.trainer import TrainingOptions

        options = TrainingOptions(
            dataset=args.dataset, configuration=args.configuration, fold=fold, epochs=args.epochs,
            patience=args.patience, batch_size=args.batch_size, learning_rate=args.lr,
            iterations_per_epoch=args.iterations_per_epoch, num_workers=args.num_workers, device=args.device,
            num_gpus=args.num_gpus, compile=args.compile, resume=args.resume, seed=args.seed,
            val_every=args.val_every, final_validation=args.final_validation, plans_name=args.plans_name)
        train(options, trainer, args.trainer_module)

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
