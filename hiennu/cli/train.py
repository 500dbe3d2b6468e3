"""``hiennu_train DATASET TRAINER [FOLD]`` (or ``DATASET -tr TRAINER [-c CONFIG] [FOLD]``): train one fold."""

from __future__ import annotations

import argparse
import re

from hiennu.cli._common import make_parser, run
from hiennu.cli._training import add_training_arguments

# nnU-Net's configuration names and hiennu's: a "trainer" spelled like one is a configuration
_CONFIGURATION_RE = re.compile(r"^(2d|3d)(_[A-Za-z0-9_]+)?$")


def build_parser() -> argparse.ArgumentParser:
    from hiennu.training.trainers import BUILTIN_TRAINERS

    p = make_parser(
        "hiennu_train",
        "Train the plans' U-Net (3D, or 2D for -c 2d) on one fold of a preprocessed dataset with the loss the trainer names. "
        "Output: $hiennu_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG/fold_K/.\n"
        "The trainer is the second positional argument or -tr TRAINER (nnU-Net's order: DATASET -c CONFIG "
        "-tr TRAINER FOLD).")
    p.usage = "%(prog)s DATASET [TRAINER] [FOLD] [-tr TRAINER] [-c CONFIGURATION] [-p NAME] [options]"
    p.add_argument("dataset", help="dataset name (BONBID), folder name (Dataset001_BONBID) or number (1)")
    p.add_argument("positional", nargs="*", metavar="[TRAINER] [FOLD]",
                   help=f"trainer ({', '.join(BUILTIN_TRAINERS)}, or your own as MODULE:CLASS) unless -tr names "
                        f"it, then the fold: 0-4 or 'all' (default 0)")
    p.add_argument("-tr", "--trainer", dest="trainer_option", default=None, metavar="TRAINER",
                   help="trainer class, instead of the positional TRAINER")
    p.add_argument("--trainer-module", default=None, help="importable module that defines TRAINER")
    add_training_arguments(p)
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
        from hiennu.study.split_seeds import ensure_seed_splits
        from hiennu.training.launch import train
        from hiennu.training.options import TrainingOptions

        options = TrainingOptions.from_args(args, fold=fold)
        ensure_seed_splits(options.dataset, options.split_seed)
        train(options, trainer, args.trainer_module)

    return run(go, verbose=not args.quiet, runs_networks=True)


if __name__ == "__main__":
    raise SystemExit(main())
