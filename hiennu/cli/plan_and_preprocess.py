"""``hiennu_plan_and_preprocess``: integrity check, fingerprint, plans and preprocessed cases of a raw dataset."""

from __future__ import annotations

import argparse

from hiennu.cli._common import run
from hiennu.planning.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from hiennu.planning.planner import DEFAULT_GPU_MEMORY_GB, GRID_POLICIES
from hiennu.planning.topology import PLAN_FOR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hiennu_plan_and_preprocess",
        description="Check a raw dataset, fingerprint it, write plans.json (3d_fullres, 3d_lossless, 3d_paper) and "
                    "preprocess its training cases into $hiennu_preprocessed.")
    p.add_argument("-d", "--dataset", required=True, help="dataset name (BONBID), folder name or number")
    p.add_argument("-c", "--configurations", nargs="+", default=None,
                   help="configurations to preprocess (default: all planned: 3d_fullres 3d_lossless 3d_paper)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--target-size", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="force this grid (x y z voxels) on the whole-volume configurations; 192 192 32 is the paper's")
    p.add_argument("--plan-for", choices=PLAN_FOR, default=None,
                   help="size 3d_fullres's network, patch and batch for this device (default: gpu when PyTorch "
                        "sees CUDA, else cpu); --gpu-memory-gb sets the GPU budget")
    p.add_argument("--grid-policy", choices=GRID_POLICIES, default="memory",
                   help="grid of 3d_lossless: memory (largest grid up to lossless that fits the GPU budget, "
                        "default) or paper (mean size rounded to multiples of 16)")
    p.add_argument("--gpu-memory-gb", type=float, default=DEFAULT_GPU_MEMORY_GB,
                   help=f"GPU memory budget of the GPU plan and the memory policy in GB (default {DEFAULT_GPU_MEMORY_GB:g})")
    p.add_argument("--check-only", action="store_true", help="run the dataset integrity check only")
    p.add_argument("--no-preprocess", action="store_true", help="stop after writing plans.json")
    p.add_argument("--keep-plans", action="store_true",
                   help="preprocess with the existing plans.json (after editing it) instead of re-planning")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = PlanAndPreprocessOptions(
        configurations=args.configurations, num_processes=args.num_processes, target_size_xyz=args.target_size,
        grid_policy=args.grid_policy, gpu_memory_gb=args.gpu_memory_gb, check_only=args.check_only,
        preprocess=not args.no_preprocess, keep_plans=args.keep_plans, plan_for=args.plan_for)
    return run(lambda: plan_and_preprocess(args.dataset, opts) and 0, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
