"""Seconds per augmented sample: hiennu's CPU path, batchgenerators' defaults, and the torch path.

Run: ``python benchmarks/bench_augmentation.py [--samples N] [--shapes 2x32x144x144 2x32x192x192]``

Compared in one run, on one CPU thread each (torch threads and BLAS limited to 1):

- ``hiennu cpu``: ``hiennu.training.augmentation`` (batchgenerators transforms, the plans' paper
  parameters, each p = 0.5, trilinear data interpolation for the elastic warp);
- ``batchgenerators default``: the same five transforms with batchgenerators' own SpatialTransform
  interpolation (cubic spline, ``order_data=3``), the usual nnU-Net-style set-up (the peer);
- ``hiennu torch cpu``: ``GPUAugmenter`` on CPU tensors, batches of 4, time / 4;
- ``hiennu torch cuda``: the same on the GPU when one is present (synchronized), batches of 4.

Data: a smooth random 2-channel image and a blob mask at each shape (C, z, y, x).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.spatial_transforms import SpatialTransform
from scipy.ndimage import gaussian_filter
from threadpoolctl import threadpool_limits

from hiennu.plans import AugmentationPlan
from hiennu.training.augmentation import augment_sample, build_transforms
from hiennu.training.gpu_augmentation import GPUAugmenter


def make_case(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    data = np.stack([gaussian_filter(rng.standard_normal(shape[1:]), 2.0) for _ in range(shape[0])]).astype(np.float32)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[1:]], indexing="ij")
    seg = (sum(g ** 2 for g in grids) < 0.3)[None].astype(np.uint8)
    return data, seg


def with_cubic_elastic(transform: Compose) -> Compose:
    out = []
    for t in transform.transforms:
        if isinstance(t, SpatialTransform):
            t = SpatialTransform(**{**t.__dict__, "order_data": 3})
        out.append(t)
    return Compose(out)


def time_cpu(transform, data, seg, n: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per sample."""
    augment_sample(transform, data, seg, 0)
    start, cpu = time.perf_counter(), time.process_time()
    for seed in range(1, n + 1):
        augment_sample(transform, data, seg, seed)
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


def time_torch(plan, data, seg, n: int, device: torch.device, batch: int = 4) -> tuple[float, float]:
    """(wall, process CPU) seconds per sample."""
    aug = GPUAugmenter(plan)
    d = torch.from_numpy(data)[None].repeat(batch, 1, 1, 1, 1).to(device)
    s = torch.from_numpy(seg.astype(np.float32))[None].repeat(batch, 1, 1, 1, 1).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    aug(d, s, g)
    rounds = max(1, n // batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        aug(d, s, g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    done = rounds * batch
    return (time.perf_counter() - start) / done, (time.process_time() - cpu) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12, help="samples timed per path and shape")
    parser.add_argument("--shapes", nargs="+", default=["2x32x144x144", "2x32x192x192"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    plan = AugmentationPlan()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print("s/sample: wall clock; cpu s/sample: process CPU time (less sensitive to other load on the machine)")
    print(f"{'shape':>14} {'path':>26} {'s/sample':>10} {'cpu s/sample':>13} {'vs bg default (wall)':>21}")
    with threadpool_limits(limits=1):
        for text in args.shapes:
            shape = tuple(int(v) for v in text.split("x"))
            data, seg = make_case(shape)
            ours = build_transforms(plan, shape[1:])
            results = {
                "batchgenerators default": time_cpu(with_cubic_elastic(ours), data, seg, args.samples),
                "hiennu cpu": time_cpu(ours, data, seg, args.samples),
                "hiennu torch cpu": time_torch(plan, data, seg, args.samples, torch.device("cpu")),
            }
            if torch.cuda.is_available():
                results["hiennu torch cuda"] = time_torch(plan, data, seg, max(args.samples, 40) * 4,
                                                          torch.device("cuda"))
            ref = results["batchgenerators default"][0]
            for name, (wall, cpu) in results.items():
                print(f"{text:>14} {name:>26} {wall:10.4f} {cpu:13.4f} {ref / wall:20.2f}x")


if __name__ == "__main__":
    main()
