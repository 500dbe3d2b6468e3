"""Time training end to end: convert -> plan + preprocess -> train TrainerTverskyHDT on one fold.

Reports, side by side with the network's own forward+backward (the floor a training step can
reach): seconds per epoch, optimizer step time, achieved TFLOP/s (FLOPs counted with
torch.utils.flop_counter), and the fraction of training time the device waited for data.
Writes everything as JSON (``--out``, default ``$OUT/bench_train_gpu.json``) and prints a table.

    # on a CUDA machine, the 37 BONBID dev cases at the planned grid, 100 epochs:
    python benchmarks/bench_train_gpu.py --src ../shared/data/BONBID2023_Train_dev --work /tmp/bench
    # tiny CPU check of the script itself:
    python benchmarks/bench_train_gpu.py --synthetic 8 --device cpu --grid 32 32 16 \
        --features 4 8 16 32 --epochs 2 --work /tmp/bench_cpu

Step time on CUDA comes from CUDA events around each step (see hiennu.training.progress.StepTimer);
the network-only time is the median of ``--repeats`` timed forward+backward passes (bf16 autocast,
channels_last_3d on CUDA; float32 on CPU) on random input of the training batch's shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--src", type=Path, help="raw BONBID data in the official layout (1ADC_ss/, 2Z_ADC/, 3LABEL/)")
    src.add_argument("--synthetic", type=int, metavar="N", help="use N synthetic cases instead (script check)")
    p.add_argument("--work", type=Path, required=True, help="folder for the hiennu_raw/preprocessed/results roots")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--trainer", default="TrainerTverskyHDT")
    p.add_argument("--fold", default="0")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=None, help="default: the plans' (4)")
    p.add_argument("--iterations-per-epoch", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--configuration", default="3d_lossless",
                   help="whole-volume configuration to train (3d_lossless or 3d_paper; --grid forces its grid)")
    p.add_argument("--grid", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="force the grid (x, y, z); default: the planner's")
    p.add_argument("--features", type=int, nargs="+", default=None, help="override features_per_stage")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--repeats", type=int, default=20, help="timed network-only passes")
    p.add_argument("--final-validation", action="store_true", help="also predict + score in native geometry")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default $OUT/bench_train_gpu.json)")
    return p.parse_args(argv)


def prepare_dataset(args: argparse.Namespace) -> str:
    """Convert (or synthesize) and plan + preprocess once; returns the dataset folder name."""
    from hiennu.datasets.bonbid import convert_bonbid
    from hiennu.datasets.synthetic import make_synthetic_dataset
    from hiennu.paths import preprocessed_root, raw_root
    from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    from hiennu.plans import load_plans, save_plans

    name = "Dataset901_Bench"
    if not (raw_root() / name).is_dir():
        if args.src is not None:
            convert_bonbid(args.src, 901, name="Bench")
        else:
            make_synthetic_dataset(901, num_cases=args.synthetic, name="Bench")
    plans_file = preprocessed_root() / name / "plans.json"
    if not plans_file.is_file():
        opts = PlanAndPreprocessOptions(target_size_xyz=args.grid, configurations=[args.configuration],
                                        num_processes=os.cpu_count() or 2)
        if args.features:
            opts.preprocess = False
        plan_and_preprocess(name, opts)
        if args.features:
            plans = load_plans(plans_file)
            net = plans.configuration(args.configuration).network
            net.features_per_stage = list(args.features)
            net.dropout_per_stage = (net.dropout_per_stage + [net.dropout_per_stage[-1]] * 8)[:len(args.features)]
            net.pool_kernel_sizes = (net.pool_kernel_sizes + [[2, 2, 2]] * 8)[:len(args.features) - 1]
            save_plans(plans, plans_file)
            plan_and_preprocess(name, dataclasses.replace(opts, preprocess=True, keep_plans=True))
    return name


def network_only(config, batch_size: int, device, repeats: int) -> dict:
    """FLOPs of one forward+backward on a (B, C, z, y, x) batch and its median time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from hiennu.networks.unet import build_network
    from hiennu.device import autocast, configure_device, memory_format

    configure_device(device)
    net = build_network(config.network).to(device, memory_format=memory_format(device)).train()
    x = torch.randn(batch_size, config.network.in_channels, *config.target_size_zyx, device=device)
    x = x.contiguous(memory_format=memory_format(device))

    def step():
        with autocast(device):
            out = net(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out.float().mean().backward()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    return {"flops_per_step": flops, "seconds": seconds, "tflops_per_s": flops / seconds / 1e12,
            "dtype": "bf16 autocast" if device.type == "cuda" else "float32", "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for env in ("hiennu_raw", "hiennu_preprocessed", "hiennu_results"):
        os.environ[env] = str((args.work / env).resolve())
    import torch
    from hiennu.log import configure
    from hiennu.plans import load_plans
    from hiennu.paths import preprocessed_root, results_root
    from hiennu.device import select_device
    from hiennu.training.launch import train
    from hiennu.training.options import TrainingOptions

    configure(verbose=True, show_progress=False)
    device = select_device(args.device)
    t0 = time.perf_counter()
    name = prepare_dataset(args)
    prepare_s = time.perf_counter() - t0
    config = load_plans(preprocessed_root() / name / "plans.json").configuration(args.configuration)
    batch = args.batch_size or config.training.batch_size
    net = network_only(config, batch, device, args.repeats)

    model_dir = results_root() / name / f"{args.trainer}__hiennuPlans__{args.configuration}"
    fold_dir = model_dir / f"fold_{args.fold}"
    if fold_dir.exists():
        import shutil
        shutil.rmtree(fold_dir)
    options = TrainingOptions(dataset=name, configuration=args.configuration, fold=args.fold, epochs=args.epochs, patience=args.epochs,
                              batch_size=args.batch_size, iterations_per_epoch=args.iterations_per_epoch,
                              num_workers=args.num_workers, device=device.type, compile=args.compile,
                              final_validation=args.final_validation)
    t1 = time.perf_counter()
    train(options, args.trainer)
    train_s = time.perf_counter() - t1
    prog = json.loads((fold_dir / "progress.json").read_text())
    steady = slice(1, None) if len(prog["epoch"]) > 1 else slice(None)  # epoch 0 holds warm-up / autotuning
    step_s = statistics.median(prog["step_seconds"][steady])
    result = {
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, "
                   f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "device": str(device),
        "trainer": args.trainer,
        "grid_xyz": config.target_size_xyz,
        "features_per_stage": config.network.features_per_stage,
        "batch_size": batch,
        "epochs_run": len(prog["epoch"]),
        "iterations_per_epoch": json.loads((fold_dir / "debug.json").read_text())["effective_training_plan"]["iterations_per_epoch"],
        "prepare_seconds": prepare_s,
        "train_wall_seconds": train_s,
        "seconds_per_epoch_median": statistics.median(prog["epoch_seconds"][steady]),
        "seconds_first_epoch": prog["epoch_seconds"][0],
        "step_seconds_median": step_s,
        "data_wait_fraction_mean": statistics.fmean(prog["data_wait_fraction"][steady]),
        "data_wait_fraction_max": max(prog["data_wait_fraction"][steady]),
        "achieved_tflops_per_s": net["flops_per_step"] / step_s / 1e12,
        "network_only": net,
        "step_over_network_ratio": step_s / net["seconds"],
        "final_val_dice_grid": prog["val_dice"][-1],
        "best_val_dice_grid": max(v for v in prog["val_dice"] if v is not None),
    }
    out = args.out or Path(os.environ.get("OUT", ".")) / "bench_train_gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [("device", result["machine"]), ("grid (x,y,z) / batch", f"{result['grid_xyz']} / {batch}"),
            ("epochs run", result["epochs_run"]), ("training wall time (s)", f"{train_s:.1f}"),
            ("seconds per epoch (median)", f"{result['seconds_per_epoch_median']:.3f}"),
            ("step time (median, s)", f"{step_s:.4f}"),
            ("network fwd+bwd alone (s)", f"{net['seconds']:.4f} ({net['dtype']})"),
            ("step / network ratio", f"{result['step_over_network_ratio']:.2f}"),
            ("GFLOP per step", f"{net['flops_per_step'] / 1e9:.1f}"),
            ("achieved TFLOP/s (step)", f"{result['achieved_tflops_per_s']:.3f}"),
            ("TFLOP/s (network alone)", f"{net['tflops_per_s']:.3f}"),
            ("data-wait fraction (mean / max)", f"{result['data_wait_fraction_mean']:.3f} / {result['data_wait_fraction_max']:.3f}"),
            ("best validation Dice (grid)", f"{result['best_val_dice_grid']:.4f}")]
    width = max(len(r[0]) for r in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
