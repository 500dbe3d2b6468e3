"""Training step and sliding-window forward pass on the CPU, float32 against bfloat16 autocast.

    python benchmarks/bench_cpu_bf16.py                        # the CPU 3d_fullres network of results.md
    python benchmarks/bench_cpu_bf16.py --plans PLANS.json     # the 3d_fullres of any plans file
    python benchmarks/bench_cpu_bf16.py --repeats 10 --threads 2

A training step is what :meth:`hiennu.training.trainer.Trainer._train_step` does: forward under
:func:`hiennu.device.autocast`, a DiceFocal loss on the float32 logits, backward, AdamW. The
forward pass is one sliding window without gradients, as prediction runs it. The default network
is the one the planner writes for BONBID on a 2-core CPU (features 16-32-64-128, instance norm,
veto rule prior, patch 48 x 88 x 72, batch 2). Prints seconds per call (median of ``--repeats``
after one warm-up) and the float32 / bf16 ratio; nothing is written.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from hiennu.device import autocast, cpu_has_native_bf16
from hiennu.losses import LOSSES
from hiennu.networks.unet import build_network
from hiennu.plans import NetworkPlan, load_plans

CPU = torch.device("cpu")


def default_network() -> tuple[NetworkPlan, tuple[int, int, int], int]:
    plan = NetworkPlan(in_channels=2, features_per_stage=[16, 32, 64, 128], pool_kernel_sizes=[[2, 2, 2]] * 3,
                       norm="instance", rule_prior=True, rule_prior_mode="veto", rule_prior_scale=10.0)
    return plan, (48, 88, 72), 2


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plans", help="a plans JSON; its 3d_fullres network, patch and batch size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plans:
        config = load_plans(args.plans).configuration("3d_fullres")
        plan, patch, batch = config.network, tuple(config.patch_size_zyx), config.training.batch_size
    else:
        plan, patch, batch = default_network()
    loss_fn = LOSSES["DiceFocal"]()
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, plan.in_channels) + patch, generator=g)
    target = (torch.rand((batch, 1) + patch, generator=g) > 0.95).float()

    rows = []
    for label, bf16 in (("float32", False), ("bfloat16 autocast", True)):
        torch.manual_seed(0)
        net = build_network(plan)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(CPU, cpu_bf16=bf16):
                out = net(x)
            loss_fn(out.float(), target).backward()
            optimizer.step()

        @torch.inference_mode()
        def forward() -> None:
            net.eval()
            with autocast(CPU, cpu_bf16=bf16):
                net(x[:1]).float()
            net.train()

        net.train()
        rows.append((label, timed(train_step, args.repeats), timed(forward, args.repeats)))

    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}")
    print(f"network {plan.features_per_stage}, patch {patch}, batch {batch}\n")
    print("| precision | training step (s) | forward, one window (s) |")
    print("|---|---|---|")
    for label, step, fwd in rows:
        print(f"| {label} | {step:.3f} | {fwd:.3f} |")
    print(f"| ratio float32 / bf16 | {rows[0][1] / rows[1][1]:.2f} | {rows[0][2] / rows[1][2]:.2f} |")


if __name__ == "__main__":
    main()
