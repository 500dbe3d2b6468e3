"""``hiennu_demo``: the whole pipeline on the embedded synthetic dataset, on CPU, in a few minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import run
from hiennu.study.demo import DemoOptions, run_demo


def parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = argparse.ArgumentParser(prog="hiennu_demo", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("-o", "--output", type=Path, default=d.output_dir,
                   help="demo folder (made by the demo and emptied on its next run)")
    p.add_argument("--cases", type=int, default=d.num_cases, help="synthetic training cases")
    p.add_argument("--test-cases", type=int, default=d.test_cases, help="synthetic held-out test cases")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per trainer")
    p.add_argument("--iterations-per-epoch", type=int, default=d.iterations_per_epoch)
    p.add_argument("--trainers", nargs="+", default=list(d.trainers))
    p.add_argument("--folds", nargs="+", type=int, default=list(d.folds))
    p.add_argument("--target-size", nargs=3, type=int, default=d.target_size_xyz, metavar=("X", "Y", "Z"),
                   help="grid (default: 48 48 16, small enough for a CPU)")
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda", "mps"])
    p.add_argument("-np", "--num-processes", type=int, default=d.num_processes)
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def go() -> int:
        result = run_demo(DemoOptions(
            output_dir=args.output, num_cases=args.cases, test_cases=args.test_cases, trainers=args.trainers,
            folds=args.folds, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
            target_size_xyz=args.target_size, device=args.device, num_processes=args.num_processes, seed=args.seed))
        print("\nhiennu demo finished")
        for step, seconds in result.seconds.items():
            print(f"  {step:<22s} {seconds:7.1f} s")
        s = result.test_scores
        print(f"  held-out synthetic test cases: Dice {s['dice']:.3f}, MASD {s['masd']:.2f} mm, NSD {s['nsd']:.3f}")
        print(f"  loss study report:  {result.study_report}")
        for fig in result.study_figures:
            print(f"  figure:             {fig}")
        print(f"  test predictions:   {result.predictions}")
        print(f"  test scores:        {result.evaluation}")
        return 0

    return run(go)


if __name__ == "__main__":
    raise SystemExit(main())
