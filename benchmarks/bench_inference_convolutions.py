"""Float32 CPU inference: torch's own dispatch of each 3D convolution against hiennu's route to oneDNN, side by side.

For a batch of one, torch sends a 3D convolution to its reference kernel (``slow_conv3d``) whenever
batch x channels x depth x height is at most 20480; :class:`hiennu.networks.unet.Conv3d` calls oneDNN's
convolution itself there when no autograd is needed. This script measures what that is worth, in one run:

1. every convolution of the model's network on one planned window (batch 1, inference mode): the kernel torch
   picks (from ``torch.profiler``) and the median time of torch's dispatch and of hiennu's, with their ratio;
2. the whole network on one window, both ways, interleaved;
3. ``Predictor.predict_folder`` on real cases with every fold and the model's mirroring, both ways, interleaved
   (arm order alternates per round), with the masks compared voxel for voxel.

"torch" is the package with :func:`hiennu.networks.unet._onednn_applies` answering False (torch's dispatch
everywhere), "hiennu" the package as it ships. float32 only (bfloat16 autocast keeps torch's dispatch). glibc's
malloc thresholds are fixed first, as ``hiennu_predict`` does (:func:`hiennu.memory.keep_freed_memory`).

    python benchmarks/bench_inference_convolutions.py -m $hiennu_results/Dataset001_BONBID/TrainerDiceFocal__hiennuPlans__3d_fullres \\
        -i $hiennu_raw/Dataset001_BONBID/imagesTr --cases 6 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

import hiennu.networks.unet as unet
from hiennu.inference.layouts import discover_input_cases
from hiennu.inference.predictor import Predictor
from hiennu.memory import keep_freed_memory

from bench_cpu_bf16 import timed  # median seconds after a warm-up call
from bench_cpu_step import cpu_model


def torch_dispatch():
    """hiennu's Conv3d with its oneDNN route switched off: torch decides the kernel, as nn.Conv3d does."""
    return mock.patch.object(unet, "_onednn_applies", lambda conv, x: False)


def cpu_header(threads: int) -> dict:
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    avx = sorted({w for w in flags.split() if w.startswith("avx")})
    return {"cpu": cpu_model(), "avx_flags": avx, "torch": torch.__version__, "threads": threads,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def convolution_inputs(net: nn.Module, window: torch.Tensor) -> list[tuple[str, unet.Conv3d, torch.Tensor]]:
    """Each hiennu Conv3d of ``net`` with the input it gets on ``window`` (one forward, hooks)."""
    seen: list[tuple[str, unet.Conv3d, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, mod, args[0].clone())))
             for name, m in net.named_modules() if isinstance(m, unet.Conv3d)]
    try:
        with torch.inference_mode():
            net(window)
    finally:
        for h in hooks:
            h.remove()
    return seen


def kernel_torch_picks(conv: nn.Module, x: torch.Tensor) -> str:
    with torch_dispatch(), torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        conv(x)
    names = {e.key for e in prof.key_averages()}
    for kernel in ("slow_conv3d_forward", "mkldnn_convolution"):
        if any(kernel in n for n in names):
            return kernel
    return "other"


def per_convolution(net: nn.Module, window: torch.Tensor, repeats: int) -> list[dict]:
    rows = []
    for name, conv, x in convolution_inputs(net, window):
        with torch.inference_mode():
            with torch_dispatch():
                t_torch = timed(lambda: conv(x), repeats)
            t_ours = timed(lambda: conv(x), repeats)
        rows.append({"layer": name, "shape": list(x.shape), "out_channels": conv.out_channels,
                     "kernel": list(conv.kernel_size), "torch_picks": kernel_torch_picks(conv, x),
                     "torch_s": t_torch, "hiennu_s": t_ours, "ratio": t_torch / t_ours})
    return rows


def whole_network(net: nn.Module, window: torch.Tensor, repeats: int) -> dict:
    torch_times, ours = [], []
    with torch.inference_mode():
        with torch_dispatch():
            reference = net(window)
        same = net(window)
        for i in range(repeats):
            for arm in ((0, 1) if i % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                if arm == 0:
                    with torch_dispatch():
                        net(window)
                    torch_times.append(time.perf_counter() - start)
                else:
                    net(window)
                    ours.append(time.perf_counter() - start)
    return {"torch_s": statistics.median(torch_times), "hiennu_s": statistics.median(ours),
            "ratio": statistics.median(torch_times) / statistics.median(ours),
            "max_abs_logit_difference": float((reference - same).abs().max())}


def whole_prediction(predictor: Predictor, images: Path, cases: int, rounds: int) -> dict:
    found = sorted(c.case_id for c in discover_input_cases(images, predictor.channel_names))
    chosen = found[:cases]
    arms = {"torch": [], "hiennu": []}
    masks: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for arm in (("torch", "hiennu") if r % 2 == 0 else ("hiennu", "torch")):
                out = Path(tmp) / f"{arm}_{r}"
                start = time.perf_counter()
                with torch_dispatch() if arm == "torch" else contextlib.nullcontext():
                    predictor.predict_folder(images, out, case_ids=chosen)
                arms[arm].append((time.perf_counter() - start) / len(chosen))
                masks.setdefault(arm, out)
        differing, total = 0, 0
        for case in chosen:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(next(masks["torch"].glob(f"{case}.*")))))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(next(masks["hiennu"].glob(f"{case}.*")))))
            differing += int(np.count_nonzero(a != b))
            total += int((a > 0).sum() + (b > 0).sum())
    return {"cases": chosen, "rounds": rounds, "torch_s_per_case": arms["torch"], "hiennu_s_per_case": arms["hiennu"],
            "ratio": statistics.median(arms["torch"]) / statistics.median(arms["hiennu"]),
            "mask_voxels_differing": differing, "mask_voxels_foreground_both_arms": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True, help="a trained model folder (or zip)")
    parser.add_argument("-i", "--images", type=Path, help="a folder of cases to predict (part 3; skipped without it)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds (default: the model's own)")
    parser.add_argument("--cases", type=int, default=6, help="cases to predict in part 3 (the first by name)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of part 3, each arm once a round")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per convolution / network (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path, help="write everything measured here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as hiennu_predict does first
    predictor = Predictor.from_path(args.model, args.folds, device="cpu")
    net = predictor.ensemble.networks[0]
    config = predictor.configuration
    patch = tuple(config.patch_size_zyx or reversed(config.target_size_xyz))  # a grid configuration: its grid
    window = torch.randn(1, len(predictor.channel_names), *patch)
    result = {"header": cpu_header(args.threads) | {"model": str(args.model), "patch_zyx": list(patch)}}
    print(json.dumps(result["header"]))
    result["convolutions"] = per_convolution(net, window, args.repeats)
    for row in result["convolutions"]:
        print(f"{row['layer']:<28} {str(row['shape']):<24} -> {row['out_channels']:<4} torch picks "
              f"{row['torch_picks']:<20} torch {row['torch_s'] * 1e3:7.1f} ms  hiennu {row['hiennu_s'] * 1e3:7.1f} ms"
              f"  ratio {row['ratio']:.2f}")
    result["network"] = whole_network(net, window, args.repeats)
    n = result["network"]
    print(f"network, one window: torch {n['torch_s']:.3f} s, hiennu {n['hiennu_s']:.3f} s, ratio {n['ratio']:.2f} "
          f"(largest logit difference {n['max_abs_logit_difference']:.1e})")
    if args.images:
        result["prediction"] = p = whole_prediction(predictor, args.images, args.cases, args.rounds)
        print(f"predict_folder, {len(p['cases'])} cases x {p['rounds']} rounds: torch "
              f"{statistics.median(p['torch_s_per_case']):.2f} s a case, hiennu "
              f"{statistics.median(p['hiennu_s_per_case']):.2f} s a case, ratio {p['ratio']:.2f}; "
              f"mask voxels differing {p['mask_voxels_differing']} (of {p['mask_voxels_foreground_both_arms']} "
              f"foreground voxels in the two arms)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
