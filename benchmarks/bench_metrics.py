"""Time hiennu's surface metrics side by side with DeepMind's surface-distance package.

Same cases, both libraries, one run: every real BONBID label (``3LABEL/*.mha``) against
perturbed copies of itself (shifted, dilated or eroded, with a few flipped voxels; seeded),
on the label's native spacing. Per case and library: Dice, MASD, NSD at 2 mm and HD95, the
best of ``--repeats`` runs. Prints per-case times, totals, the speed ratio and the largest
disagreement between the two libraries.

    pip install surface-distance        # the peer (optional)
    python benchmarks/bench_metrics.py [--data ../shared/data/BONBID2023_Train_dev] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from hiennu.evaluation import surface
from hiennu.evaluation.metrics import case_metrics
from hiennu.io.image import read_image
from hiennu.masks import dice

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "BONBID2023_Train_dev"


def perturbations(label: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Three predictions per label: shifted by 1-2 voxels, dilated, eroded; each with sparse flipped voxels."""
    noise = rng.random(label.shape) > 0.9998
    return {"shift": np.roll(label, int(rng.integers(1, 3)), axis=2) ^ noise,
            "dilate": ndimage.binary_dilation(label) ^ noise,
            "erode": ndimage.binary_erosion(label) ^ noise}


def ours(ref, pred, spacing):
    sd = surface.surface_distances(ref, pred, spacing)
    to_pred, to_ref = surface.average_surface_distances(sd)
    return dice(ref, pred), (to_pred + to_ref) / 2, surface.surface_dice(sd, 2.0), surface.robust_hausdorff(sd, 95)


def peer(sdp, ref, pred, spacing):
    d = sdp.compute_surface_distances(ref, pred, spacing)
    to_pred, to_ref = sdp.compute_average_surface_distance(d)
    return (sdp.compute_dice_coefficient(ref, pred), (to_pred + to_ref) / 2,
            sdp.compute_surface_dice_at_tolerance(d, 2.0), sdp.compute_robust_hausdorff(d, 95))


def best_time(func, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="only the first N labels")
    args = parser.parse_args()

    import warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import surface_distance as sdp
    if not hasattr(np, "Inf"):  # the package still uses np.Inf, removed in numpy 2
        np.Inf = np.inf

    start = time.perf_counter()
    surface.surfel_area_table((1.0, 1.0, 1.0))
    table_s = time.perf_counter() - start

    labels = sorted((args.data / "3LABEL").glob("*.mha"))[: args.limit]
    rng = np.random.default_rng(0)
    rows, skipped, worst = [], 0, 0.0
    for path in labels:
        label, geometry = read_image(path)
        label = label != 0
        spacing = geometry.spacing_zyx
        for kind, pred in perturbations(label, rng).items():
            if not label.any() or not pred.any():
                skipped += 1  # the peer has no empty-mask rules; compared on non-empty pairs only
                continue
            t_ours, r_ours = best_time(lambda: ours(label, pred, spacing), args.repeats)
            t_peer, r_peer = best_time(lambda: peer(sdp, label, pred, spacing), args.repeats)
            t_full, _ = best_time(lambda: case_metrics(label, pred, spacing), args.repeats)
            worst = max(worst, float(np.max(np.abs(np.subtract(r_ours, r_peer)))))
            rows.append((path.name.split("_lesion")[0], kind, int(label.sum()), t_ours, t_peer, t_full))

    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"numpy {np.__version__}; best of {args.repeats} per case, single process")
    print(f"one-time surfel table derivation (marching cubes, cached per process): {table_s * 1000:.1f} ms")
    print(f"{'case':24s} {'pred':6s} {'voxels':>7s} {'hiennu ms':>10s} {'peer ms':>9s} {'ratio':>6s} {'all metrics ms':>15s}")
    for case, kind, voxels, t_o, t_p, t_f in rows:
        print(f"{case:24s} {kind:6s} {voxels:7d} {t_o * 1e3:10.2f} {t_p * 1e3:9.2f} {t_p / t_o:6.1f} {t_f * 1e3:15.2f}")
    t_o = sum(r[3] for r in rows)
    t_p = sum(r[4] for r in rows)
    t_f = sum(r[5] for r in rows)
    ratios = np.array([r[4] / r[3] for r in rows])
    print(f"\n{len(rows)} case pairs ({skipped} skipped: an empty mask)")
    print(f"total: hiennu {t_o:.3f} s, surface-distance {t_p:.3f} s -> {t_p / t_o:.1f}x faster "
          f"(per-case ratio median {np.median(ratios):.1f}x, min {ratios.min():.1f}x)")
    print(f"mean per case: hiennu {t_o / len(rows) * 1e3:.2f} ms (all metrics incl. lesion detection "
          f"{t_f / len(rows) * 1e3:.2f} ms), surface-distance {t_p / len(rows) * 1e3:.2f} ms")
    print(f"largest |difference| over Dice, MASD, NSD, HD95: {worst:.2e}")


if __name__ == "__main__":
    main()
