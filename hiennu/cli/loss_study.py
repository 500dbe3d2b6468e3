"""``hiennu_loss_study -d DATASET [--trainers ...] [--folds 0 1 2 3 4]``: compare the losses by cross-validation."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import make_parser, run
from hiennu.cli._training import add_training_arguments
from hiennu.study.loss_study import STUDY_TRAINERS, LossStudyOptions, run_loss_study
from hiennu.training.options import TrainingOptions


# training options the study sets itself (resume, final validation) or does not offer
NOT_STUDY_OPTIONS = ("learning_rate", "num_gpus", "compile", "resume", "val_every", "final_validation",
                     "validation_only")
STUDY_HELP = {
    "epochs": "maximum epochs per fold (default: the plans')",
    "patience": "early-stopping patience in epochs (default: the plans')",
    "batch_size": "batch size (default: the plans')",
    "num_workers": "data-augmentation worker processes (default: the plans')",
    "seed": "random seed of every training",
    "validation_checkpoint": "the checkpoint whose cross-validation masks the study scores: final (default, as "
                             "nnU-Net) or best (chosen on those same cases, so it flatters the model); a finished "
                             "fold validated with the other one is re-validated, not retrained",
    "save_probabilities": "each fold's final validation also keeps its cases' probabilities (fold_K/validation/"
                          "CASE.npz, nnU-Net's --npz) for hiennu_find_best_configuration; a finished fold validated "
                          "without them is re-validated, not retrained",
    "split_seed": "study the folds of split seed S (splits_seed{S}.json, written when absent; models under "
                  "split_seed_S/, the study folder gets a _splitS suffix); default: splits_final.json",
    "plans_name": "plans identifier (as for hiennu_train): study the models trained with NAME.json; the study "
                  "folder is then loss_study_NAME__CONFIG",
}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("hiennu_loss_study", __doc__.split(":", 1)[1].strip().strip("`. "))
    p.add_argument("-d", "--dataset", required=True, help="dataset name, folder name or number")
    p.add_argument("--trainers", nargs="+", default=list(STUDY_TRAINERS), help="trainer class names")
    p.add_argument("--folds", nargs="+", default=["all"],
                   help="folds to train and score: numbers 0-4, or 'all' for all five")
    add_training_arguments(p, exclude=NOT_STUDY_OPTIONS, help=STUDY_HELP)
    p.add_argument("--reference", default=None,
                   help="trainer the Wilcoxon tests compare against, one of --trainers (default: TrainerDice when "
                        "studied, else the first trainer)")
    p.add_argument("--figure-cases", type=int, default=4, help="cases (rows) in the slices figure")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for scoring")
    p.add_argument("-o", "--output", type=Path, default=None, help="study folder (default: under the results folder)")
    p.add_argument("--retrain-mismatched", action="store_true",
                   help="a finished fold trained with other plans, trainer, options, seed or hiennu version than "
                        "requested is moved aside (fold_K.replaced-<timestamp>) and trained again; without this "
                        "flag the study refuses, naming what differs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        result = run_loss_study(LossStudyOptions(
            dataset=args.dataset, trainers=args.trainers, folds=args.folds, training=TrainingOptions.from_args(args),
            reference=args.reference, figure_cases=args.figure_cases, num_processes=args.num_processes,
            output_dir=args.output, retrain_mismatched=args.retrain_mismatched))
        if not args.quiet:
            print(f"loss study report: {result.output_dir / 'report.md'}")
        return 0

    return run(go, verbose=not args.quiet, runs_networks=True)


if __name__ == "__main__":
    raise SystemExit(main())
