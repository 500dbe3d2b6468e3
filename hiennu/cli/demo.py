"""``hiennu_demo``: the whole pipeline on the embedded synthetic dataset, on CPU, in a few minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import add_device, make_parser, run
from hiennu.study.demo import DemoOptions, DemoResult, run_demo


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = make_parser("hiennu_demo", __doc__.split(":", 1)[1].strip(),
                    quiet_help="warnings and errors only: no progress bars and no closing summary")
    p.add_argument("-o", "--output", type=Path, default=d.output_dir,
                   help="demo folder (made by the demo and emptied on its next run)")
    p.add_argument("--cases", type=int, default=d.num_cases, help="synthetic training cases")
    p.add_argument("--test-cases", type=int, default=d.test_cases, help="synthetic held-out test cases")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per trainer (default: the plans' CPU schedule)")
    p.add_argument("--iterations-per-epoch", type=int, default=d.iterations_per_epoch, help="steps per epoch (default: the plans')")
    p.add_argument("--trainers", nargs="+", default=list(d.trainers),
                   help="trainers of the small loss study; the last one predicts the test cases")
    p.add_argument("--folds", nargs="+", type=int, default=list(d.folds), help="folds each trainer trains")
    p.add_argument("--target-size", nargs=3, type=int, default=d.target_size_xyz, metavar=("X", "Y", "Z"),
                   help="grid of the whole-volume configurations (3d_paper, 3d_lossless), which the demo does not "
                        "train: its 3d_fullres plans its own spacing")
    add_device(p, default=d.device, help="cpu, cuda, cuda:N or mps")
    p.add_argument("-np", "--num-processes", type=int, default=d.num_processes,
                   help="worker processes for preprocessing and scoring")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the synthetic data and of the trainings")
    return p


def summary_lines(result: DemoResult) -> list[str]:
    """The closing summary: timings, scores, where everything is, and how to predict with its models."""
    lines = ["", "hiennu demo finished"]
    lines += [f"  {step:<22s} {seconds:7.1f} s" for step, seconds in result.seconds.items()]
    s = result.test_scores
    lines.append(f"  held-out synthetic test cases: Dice {s['dice']:.3f}, MASD {s['masd']:.2f} mm, NSD {s['nsd']:.3f}")
    if result.rule_scores:
        r = result.rule_scores
        lines.append(f"  ZADC < -2 rule, same cases:    Dice {r['dice']:.3f}, MASD {r['masd']:.2f} mm, NSD {r['nsd']:.3f}")
    lines.append("  (a short CPU schedule on synthetic data: it shows that every stage runs and connects; for what "
                 "hiennu measures on real BONBID cases see documentation/results.md)")
    lines.append(f"  loss study report:  {result.study_report}")
    lines += [f"  figure:             {fig}" for fig in result.study_figures]
    lines.append(f"  test predictions:   {result.predictions}")
    lines.append(f"  test scores:        {result.evaluation}")
    hint = result.prediction_hint()
    if hint:
        lines += ["", "The demo's models live in its own results folder. To predict with them:"]
        lines += [f"  {line}" for line in hint]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        result = run_demo(DemoOptions(
            output_dir=args.output, num_cases=args.cases, test_cases=args.test_cases, trainers=args.trainers,
            folds=args.folds, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
            target_size_xyz=args.target_size, device=args.device, num_processes=args.num_processes, seed=args.seed))
        if not args.quiet:
            print("\n".join(summary_lines(result)))
        return 0

    return run(go, verbose=not args.quiet, runs_networks=True)


if __name__ == "__main__":
    raise SystemExit(main())
