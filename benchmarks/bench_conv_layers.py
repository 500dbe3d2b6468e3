"""Where a CPU training step of the planned network goes, convolution by convolution, in both memory layouts.

    source /work/hw/env.sh                      # any hiennu_preprocessed holding the dataset's plans
    python benchmarks/bench_conv_layers.py -d BONBID --config 3d_fullres
    python benchmarks/bench_conv_layers.py --plans plans.json --rounds 3 --json /tmp/conv.json

Why: on a 2-core box without AVX-512 the ``3d_fullres`` backward pass costs three times its forward
(``bench_cpu_step.py``), where a convolution's backward is usually about twice its forward (one pass for the
input's gradient, one for the weights'), and a ``channels_last_3d`` network gains next to nothing. This script
says which convolution and which of its gradients take the time, and what the layout changes, per layer and for
the whole step. It needs no data: the network is built from the plans and fed random tensors of the planned
batch and patch (the values do not change a convolution's cost).

What it measures, in one process, the two layouts interleaved (contiguous, channels_last_3d, contiguous, ...) so
a load that comes and goes hits both alike; medians over ``--rounds``:

1. **The whole step**: forward, ``mean()`` of the logits, backward, AdamW, of the planned network
   (``bench_cpu_step.make_bare``), the network and its input in each layout.
2. **Each distinct convolution** of that step (found by hooks on one forward pass; its input shape, weight shape
   and stride; transposed convolutions included): the forward, the input's gradient alone, the weights'
   gradient alone and both together (``torch.ops.aten.convolution_backward`` with the output mask PyTorch's
   autograd uses), and how many times the step runs it. ``share`` is the convolution's forward + both gradients
   times its count over the whole contiguous step.
3. **By operator**: ``torch.profiler``'s self CPU time of the contiguous step by aten operator, the top ten.

Nothing is written except ``--json OUT``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench_cpu_step import make_bare, planned_configuration  # benchmarks/ is on sys.path: this runs as a script
from hiennu.errors import HiennuError
from hiennu.networks.unet import build_network

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}


@dataclass(frozen=True)
class ConvCall:
    """One distinct convolution of the network's forward: input ``(B, C, z, y, x)`` and weight shapes, and how."""
    transposed: bool
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    has_bias: bool

    @property
    def label(self) -> str:
        kind = "transposed " if self.transposed else ""
        out_ch, in_ch = (self.weight_shape[1], self.weight_shape[0]) if self.transposed else self.weight_shape[:2]
        kernel = "x".join(str(k) for k in self.weight_shape[2:])
        return f"{kind}{in_ch}->{out_ch} {kernel} stride {self.stride[0]} on {'x'.join(map(str, self.input_shape[2:]))}"


def conv_calls(network: nn.Module, x: torch.Tensor) -> dict[ConvCall, int]:
    """The distinct 3D convolutions one forward of ``network`` on ``x`` runs, each with how often it runs."""
    seen: dict[ConvCall, int] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        call = ConvCall(isinstance(module, nn.ConvTranspose3d), tuple(inputs[0].shape), tuple(module.weight.shape),
                        tuple(module.stride), tuple(module.padding), module.bias is not None)
        seen[call] = seen.get(call, 0) + 1

    handles = [m.register_forward_hook(hook) for m in network.modules()
               if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    try:
        with torch.no_grad():
            network(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def conv_timers(call: ConvCall, layout: torch.memory_format) -> dict[str, Callable[[], Any]]:
    """Callables running ``call``'s forward, input gradient, weight gradient and both, on random tensors."""
    x = torch.randn(call.input_shape).to(memory_format=layout)
    w = torch.randn(call.weight_shape).to(memory_format=layout)
    b = torch.zeros(call.weight_shape[1] if call.transposed else call.weight_shape[0]) if call.has_bias else None
    dilation, output_padding = [1] * len(call.stride), [0] * len(call.stride)
    with torch.no_grad():
        y = torch.ops.aten.convolution(x, w, b, list(call.stride), list(call.padding), dilation, call.transposed,
                                       output_padding, 1)
    g = torch.randn(y.shape).to(memory_format=layout)  # the same values in either layout
    bias_sizes = None if b is None else list(b.shape)

    def backward(mask: list[bool]) -> Callable[[], Any]:
        return lambda: torch.ops.aten.convolution_backward(g, x, w, bias_sizes, list(call.stride), list(call.padding),
                                                           dilation, call.transposed, output_padding, 1, mask)

    with_bias = b is not None
    return {
        "forward": lambda: torch.ops.aten.convolution(x, w, b, list(call.stride), list(call.padding), dilation,
                                                      call.transposed, output_padding, 1),
        "input_grad": backward([True, False, False]),
        "weight_grad": backward([False, True, with_bias]),
        "both": backward([True, True, with_bias]),
    }


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def operator_table(step: Callable[[], None], top: int = 10) -> list[tuple[str, float, int]]:
    """(aten operator, self CPU seconds per step, calls per step) of one profiled step, the ``top`` largest."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages() if e.key.startswith("aten::")]
    return sorted(rows, key=lambda r: -r[1])[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", default="BONBID")
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--plans-name", default="hiennuPlans", help="plans identifier (-p), default %(default)s")
    ap.add_argument("--plans", help="a plans JSON (default: the dataset's preprocessed plans)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per layout (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, the cores)")
    ap.add_argument("--json", help="write every raw timing here")
    args = ap.parse_args(argv)
    try:
        config = planned_configuration(args.plans, args.dataset, args.plans_name, args.config)
    except HiennuError as error:
        ap.exit(1, f"bench_conv_layers.py: {error}\n")
    if config.network.spatial_dims != 3:
        ap.exit(1, f"bench_conv_layers.py: --config {args.config} is a {config.network.spatial_dims}D network; "
                   "this benchmark times 3D convolutions (bench_cpu_step.py times any step)\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, patch = config.training.batch_size, tuple(config.input_size_zyx)
    torch.manual_seed(0)
    network = build_network(config.network).train()
    x = torch.randn(batch, config.network.in_channels, *patch)
    steps = {name: make_bare(network, x, bf16=False, lr=1e-3, layout=name)[0] for name in LAYOUTS}
    calls = conv_calls(network, x)
    timers = {(call, name): conv_timers(call, fmt) for call in calls for name, fmt in LAYOUTS.items()}
    print(f"{config.name}: batch {batch} x {'x'.join(map(str, patch))}, widths {config.network.features_per_stage}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
          flush=True)

    raw: dict[str, list[float]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up and is dropped
        for name in LAYOUTS:
            t = seconds(steps[name])
            if r:
                raw.setdefault(f"step/{name}", []).append(t)
            for call in calls:
                for part, fn in timers[(call, name)].items():
                    t = seconds(fn)
                    if r:
                        raw.setdefault(f"{call.label}/{name}/{part}", []).append(t)
    med = {k: statistics.median(v) for k, v in raw.items()}
    step_c, step_cl = med["step/contiguous"], med["step/channels_last_3d"]
    print(f"\nwhole step (forward, mean, backward, AdamW): contiguous {step_c:.3f} s, channels_last_3d {step_cl:.3f} s "
          f"({step_c / step_cl:.2f}x)\n")
    print("| convolution (input z x y x x) | runs a step | forward | input grad | weight grad | both grads | "
          "backward / forward | share of the step | channels_last_3d: forward, both grads |")
    print("|---|---|---|---|---|---|---|---|---|")
    table = []
    for call, count in sorted(calls.items(), key=lambda kv: -kv[1] * med[f"{kv[0].label}/contiguous/both"]):
        c = {p: med[f"{call.label}/contiguous/{p}"] for p in ("forward", "input_grad", "weight_grad", "both")}
        cl = {p: med[f"{call.label}/channels_last_3d/{p}"] for p in ("forward", "both")}
        share = count * (c["forward"] + c["both"]) / step_c
        table.append({"convolution": call.label, "count": count, "contiguous": c, "channels_last_3d": cl,
                      "share": share})
        print(f"| {call.label} | {count} | {c['forward']:.3f} | {c['input_grad']:.3f} | {c['weight_grad']:.3f} | "
              f"{c['both']:.3f} | {c['both'] / c['forward']:.1f} | {share:.0%} | {cl['forward']:.3f}, {cl['both']:.3f} |")
    convolutions = sum(row["share"] for row in table)
    print(f"\nconvolutions, forward and backward: {convolutions:.0%} of the contiguous step")
    ops = operator_table(steps["contiguous"])
    print("\n| aten operator (contiguous step, profiled once) | self CPU s | calls |\n|---|---|---|")
    for name, secs, count in ops:
        print(f"| {name} | {secs:.3f} | {count} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config.name, "batch": batch, "patch_zyx": list(patch),
                                               "threads": torch.get_num_threads(), "torch": torch.__version__,
                                               "raw_seconds": raw, "table": table, "operators": ops}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
