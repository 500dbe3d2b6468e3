"""Time every hiennu loss (forward + backward) side by side with MONAI's, on CPU and on CUDA if present.

    python benchmarks/bench_losses.py                 # the paper's batch: 4 x 1 x 32 x 192 x 192
    python benchmarks/bench_losses.py --quick         # 2 x 1 x 16 x 64 x 64
    python benchmarks/bench_losses.py --shape 4,32,192,192 --repeats 5 --device cpu

Inputs imitate a training step: per sample one ellipsoidal lesion as the target and logits that are
smooth noise plus a bias towards the target, so the thresholded prediction is blob-like. With
``--noisy`` the logits are white noise (an untrained network), the hardest case for the CPU
distance transform. MONAI (``pip install monai``) is optional; without it only hiennu is timed.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hiennu.losses import LOSSES

MONAI_EQUIVALENT = {
    "Dice": ("DiceLoss", {"sigmoid": True}),
    "Focal": ("FocalLoss", {"gamma": 2.0}),
    "DiceFocal": ("DiceFocalLoss", {"sigmoid": True, "gamma": 2.0}),
    "Tversky": ("TverskyLoss", {"sigmoid": True, "alpha": 0.3, "beta": 0.7}),
    "HausdorffDT": ("HausdorffDTLoss", {"sigmoid": True}),
    "LogHausdorffDT": ("LogHausdorffDTLoss", {"sigmoid": True}),
}


def make_inputs(shape, device, noisy: bool, seed: int = 0):
    b, z, y, x = shape
    g = torch.Generator().manual_seed(seed)
    # a single slice (a 2D batch, z = 1) lies at the centre, so its lesions cut through it
    grid = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, n) if n > 1 else torch.zeros(1) for n in (z, y, x)),
                                      indexing="ij"))
    target = torch.zeros(b, 1, z, y, x)
    for i in range(b):
        centre = (torch.rand(3, generator=g) - 0.5) * 0.8
        radii = 0.08 + 0.25 * torch.rand(3, generator=g)
        target[i, 0] = ((((grid - centre.view(3, 1, 1, 1)) / radii.view(3, 1, 1, 1)) ** 2).sum(0) < 1).float()
    noise = torch.randn(b, 1, z, y, x, generator=g)
    if not noisy:
        kernel = tuple(min(5, n) - (1 - min(5, n) % 2) for n in (z, y, x))   # odd, at most 5, at most the axis
        noise = F.avg_pool3d(noise, kernel, stride=1, padding=tuple(k // 2 for k in kernel)) * 5
    logits = noise + 4 * (target - 0.5)
    return logits.to(device), target.to(device)


def time_loss(loss, logits, target, repeats: int, device) -> float:
    """Fastest of `repeats` forward + backward calls, in seconds (after one warm-up call)."""
    times = []
    for i in range(repeats + 1):
        x = logits.detach().clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss(x, target).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return min(times)


def monai_loss(name):
    try:
        import monai.losses as monai_losses
    except ImportError:
        return None
    if name in MONAI_EQUIVALENT:
        cls, kwargs = MONAI_EQUIVALENT[name]
        return getattr(monai_losses, cls)(**kwargs)
    if name in ("DiceFocalHDT", "TverskyHDT"):
        region_name = "DiceFocal" if name == "DiceFocalHDT" else "Tversky"
        region, log_hdt = monai_loss(region_name), monai_loss("LogHausdorffDT")
        return lambda x, t: 0.9 * region(x, t) + 0.1 * log_hdt(x, t)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4,32,192,192", help="B,z,y,x (one channel)")
    parser.add_argument("--quick", action="store_true", help="shape 2,16,64,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--noisy", action="store_true", help="white-noise logits (untrained network)")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset")
    parser.add_argument("--backend", default="auto", choices=["auto", "native", "torch", "triton", "itk"],
                        help="distance-transform back-end of the Hausdorff losses ('native' on CUDA tensors "
                             "computes the fields on the host)")
    parser.add_argument("--edt", action="store_true",
                        help="also time the distance transform back-ends against scipy on the batch's masks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (2, 16, 64, 64) if args.quick else tuple(int(v) for v in args.shape.split(","))
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    import warnings
    warnings.filterwarnings("ignore", message="single channel prediction")
    for dev in devices:
        device = torch.device(dev)
        logits, target = make_inputs(shape, device, args.noisy)
        print(f"\n{dev}: logits {tuple(logits.shape)}, {args.repeats} repeats (best of, forward+backward), "
              f"{args.threads} torch threads, {'white-noise' if args.noisy else 'blob-like'} prediction, "
              f"distance back-end {args.backend}")
        print(f"{'loss':<16}{'hiennu ms':>12}{'MONAI ms':>12}{'MONAI/hiennu':>14}")
        for name in args.losses.split(","):
            uses_fields = "Hausdorff" in name or "HDT" in name
            ours = time_loss(LOSSES[name](backend=args.backend) if uses_fields else LOSSES[name](),
                             logits, target, args.repeats, device)
            peer = monai_loss(name)
            theirs = time_loss(peer, logits, target, args.repeats, device) if peer is not None else float("nan")
            print(f"{name:<16}{ours * 1e3:>12.1f}{theirs * 1e3:>12.1f}{theirs / ours:>14.1f}", flush=True)
        if args.edt:
            time_edt_backends(logits, target, args.repeats, device)


def time_edt_backends(logits, target, repeats: int, device) -> None:
    """Seconds per batch for the four masks the Hausdorff loss transforms, per back-end and scipy."""
    import numpy as np
    from scipy import ndimage

    from hiennu.losses import squared_euclidean_distance_transform

    pred, gt = (logits > 0)[:, 0], (target > 0.5)[:, 0]
    masks = {"prediction": pred, "prediction background": ~pred, "target": gt, "target background": ~gt}
    from hiennu.losses.distance import _triton_module

    backends = ("native", "itk", "torch") + (("triton",) if device.type == "cuda" and _triton_module() else ())
    print(f"\n{'EDT of the batch':<24}{'scipy ms':>10}" + "".join(f"{b + ' ms':>12}" for b in backends))
    for label, mask in masks.items():
        host = mask.cpu().numpy()
        row = []
        for fn in [lambda: [ndimage.distance_transform_edt(m) for m in host]] + [
                (lambda b=b: squared_euclidean_distance_transform(mask, backend=b)) for b in backends]:
            best = np.inf
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            row.append(best)
        print(f"{label:<24}" + "".join(f"{t * 1e3:>10.1f}" if i == 0 else f"{t * 1e3:>12.1f}"
                                       for i, t in enumerate(row)), flush=True)


if __name__ == "__main__":
    main()
