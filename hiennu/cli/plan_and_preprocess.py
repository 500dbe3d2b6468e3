"""``hiennu_plan_and_preprocess``: integrity check, fingerprint, plans and preprocessed cases of a raw dataset."""

from __future__ import annotations

import argparse

from hiennu.cli._common import add_alias, add_plans_name, make_parser, run
from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from hiennu.planning.planner import DEFAULT_GPU_MEMORY_GB, GRID_POLICIES
from hiennu.planning.topology import PLAN_FOR


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "hiennu_plan_and_preprocess",
        "Check a raw dataset, fingerprint it, write plans.json (3d_fullres, 2d, 3d_lossless, 3d_paper) and "
        "preprocess its training cases into $hiennu_preprocessed.")
    p.add_argument("-d", "--dataset", required=True, help="dataset name (BONBID), folder name or number")
    p.add_argument("-c", "--configurations", nargs="+", default=None,
                   help="configurations to preprocess (default: all planned: 3d_fullres 2d 3d_lossless 3d_paper)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes")
    p.add_argument("--target-size", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="force this grid (x y z voxels) on the whole-volume configurations; 192 192 32 is the paper's")
    p.add_argument("--target-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="force 3d_fullres's target spacing (mm, z y x, as target_spacing_zyx in plans.json) instead "
                        "of nnU-Net's rule and its round-trip refinement; the round trip is still measured and "
                        "reported (like nnU-Net's -overwrite_target_spacing)")
    p.add_argument("--plan-for", choices=PLAN_FOR, default=None,
                   help="size 3d_fullres's network, patch and batch for this device (default: gpu when PyTorch "
                        "sees CUDA, else cpu); --gpu-memory-gb sets the GPU budget")
    p.add_argument("--grid-policy", choices=GRID_POLICIES, default="memory",
                   help="grid of 3d_lossless: memory (largest grid up to lossless that fits the GPU budget) "
                        "or paper (mean size rounded to multiples of 16)")
    p.add_argument("--gpu-memory-gb", type=float, default=DEFAULT_GPU_MEMORY_GB,
                   help="GPU memory budget (GiB) of the GPU plan of 3d_fullres and of 3d_lossless's memory policy")
    p.add_argument("--check-only", action="store_true", help="run the dataset integrity check only")
    p.add_argument("--no-preprocess", action="store_true", help="stop after writing the plans")
    p.add_argument("--keep-plans", action="store_true",
                   help="preprocess with the existing plans file (after editing it) instead of re-planning")
    add_plans_name(p, "plans identifier: written as NAME.json (the default as plans.json), so an edited plan "
                      "can live beside the original; train, predict and export take the same -p")
    # nnU-Net's spellings (its integrity check is optional, hiennu's always runs: --verify_dataset_integrity is a no-op)
    add_alias(p, "-overwrite_target_spacing", dest="target_spacing", type=float, nargs=3)
    add_alias(p, "--no_pp", dest="no_preprocess", action="store_true")
    add_alias(p, "-gpu_memory_target", dest="gpu_memory_gb", type=float)
    add_alias(p, "-overwrite_plans_name", dest="plans_name")
    add_alias(p, "--verify_dataset_integrity", dest="verify_dataset_integrity", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = PlanAndPreprocessOptions(
        configurations=args.configurations, num_processes=args.num_processes, target_size_xyz=args.target_size,
        grid_policy=args.grid_policy, gpu_memory_gb=args.gpu_memory_gb, check_only=args.check_only,
        preprocess=not args.no_preprocess, keep_plans=args.keep_plans, plan_for=args.plan_for,
        plans_name=args.plans_name, target_spacing_zyx=args.target_spacing)
    return run(lambda: plan_and_preprocess(args.dataset, opts) and 0, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
