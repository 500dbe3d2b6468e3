"""``hiennu_loss_study -d DATASET [--trainers ...] [--folds 0 1 2 3 4]``: compare the losses by cross-validation."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import run
from hiennu.study.loss_study import STUDY_TRAINERS, LossStudyOptions, run_loss_study


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hiennu_loss_study", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("-d", "--dataset", required=True, help="dataset name, folder name or number")
    p.add_argument("--trainers", nargs="+", default=list(STUDY_TRAINERS), help="trainer class names (default: all six)")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("-c", "--configuration", default=None, help="plans configuration (default: the plans' default)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--iterations-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--reference", default="TrainerDice", help="trainer the Wilcoxon tests compare against")
    p.add_argument("--figure-cases", type=int, default=4)
    p.add_argument("-np", "--num-processes", type=int, default=2)
    p.add_argument("-o", "--output", type=Path, default=None, help="study folder (default: under the results folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def go() -> int:
        result = run_loss_study(LossStudyOptions(
            dataset=args.dataset, trainers=args.trainers, folds=args.folds, configuration=args.configuration,
            epochs=args.epochs, patience=args.patience, iterations_per_epoch=args.iterations_per_epoch,
            batch_size=args.batch_size, num_workers=args.num_workers, device=args.device, seed=args.seed,
            reference=args.reference, figure_cases=args.figure_cases, num_processes=args.num_processes,
            output_dir=args.output))
        print(f"loss study report: {result.output_dir / 'report.md'}")
        return 0

    return run(go)
