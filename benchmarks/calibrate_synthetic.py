"""Compare the statistics of the synthetic generator with the real BONBID dev cases.

Usage::

    python benchmarks/calibrate_synthetic.py [--real ../shared/data/BONBID2023_Train_dev]
                                             [--preset small|bonbid] [--cases N] [--seed S]

Per case, inside the brain (ADC != 0): ADC percentiles 5/50/95/99 and the fraction of negative
values, ZADC percentiles 5/50/95, the lesion fraction of the brain, and the Dice of the challenge
baseline ZADC < -2 against the label (both empty: 1). The table gives the median over cases with
the range [min, max], the lesion-fraction distribution and the mean baseline Dice, for the real
cases and for the synthetic ones (generated in memory, same code as hiennu_make_synthetic).
Prints a Markdown table (the one in documentation/datasets.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from hiennu.datasets.bonbid import find_bonbid_cases
from hiennu.datasets.synthetic import PRESETS, case_ids, generate_case, lesion_category
from hiennu.io.image import read_image

DEFAULT_REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "BONBID2023_Train_dev"


def case_stats(adc: np.ndarray, zadc: np.ndarray, label: np.ndarray) -> dict[str, float]:
    brain = adc != 0
    a, z = adc[brain], zadc[brain]
    lesion = label > 0
    pred = zadc < -2
    denominator = pred.sum() + lesion.sum()
    dice = 1.0 if denominator == 0 else 2.0 * (pred & lesion).sum() / denominator
    stats = {f"adc_p{q}": float(np.percentile(a, q)) for q in (5, 50, 95, 99)}
    stats["adc_neg"] = float((a < 0).mean())
    stats.update({f"zadc_p{q}": float(np.percentile(z, q)) for q in (5, 50, 95)})
    stats["lesion_fraction"] = float(lesion.sum() / brain.sum())
    stats["dice_zadc_lt_-2"] = float(dice)
    stats["slices"] = float(adc.shape[0])
    stats["inplane"] = float(adc.shape[2])
    return stats


def real_stats(src: Path) -> list[dict[str, float]]:
    out = []
    for case in find_bonbid_cases(src):
        adc, _ = read_image(case.adc)
        zadc, _ = read_image(case.zadc)
        label, _ = read_image(case.label)
        out.append(case_stats(adc, zadc, label))
    return out


def synthetic_stats(preset: str, num_cases: int, seed: int) -> list[dict[str, float]]:
    spec = PRESETS[preset]
    out = []
    for index, cid in enumerate(case_ids(num_cases)):
        case = generate_case(cid, np.random.default_rng([seed, index]), spec, lesion_category(seed, index))
        out.append(case_stats(case.adc, case.zadc, case.label))
    return out


def summarize(rows: list[dict[str, float]]) -> dict[str, str]:
    def col(k):
        return np.array([r[k] for r in rows])

    summary = {}
    for key in ("inplane", "slices", "adc_p5", "adc_p50", "adc_p95", "adc_p99", "adc_neg", "zadc_p5", "zadc_p50",
                "zadc_p95"):
        v = col(key)
        fmt = "{:.4f}" if key == "adc_neg" else ("{:.2f}" if key.startswith("zadc") else "{:.0f}")
        summary[key] = f"{fmt.format(np.median(v))} [{fmt.format(v.min())}, {fmt.format(v.max())}]"
    lf = col("lesion_fraction")
    summary["lesion fraction median [p25, p75]"] = (f"{np.median(lf):.4f} [{np.percentile(lf, 25):.4f}, "
                                                    f"{np.percentile(lf, 75):.4f}]")
    summary["lesion fraction max"] = f"{lf.max():.3f}"
    summary["cases with no lesion"] = f"{(lf == 0).mean():.2f}"
    summary["cases with lesion < 1% of brain (incl. none)"] = f"{(lf < 0.01).mean():.2f}"
    summary["cases with lesion > 50% of brain"] = f"{(lf > 0.5).mean():.2f}"
    d = col("dice_zadc_lt_-2")
    summary["Dice of ZADC < -2, mean (median)"] = f"{d.mean():.3f} ({np.median(d):.3f})"
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL)
    parser.add_argument("--preset", default="bonbid", choices=sorted(PRESETS))
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.cases or PRESETS[args.preset].num_cases
    t0 = time.perf_counter()
    synth = summarize(synthetic_stats(args.preset, n, args.seed))
    t_synth = time.perf_counter() - t0
    real = summarize(real_stats(args.real.resolve())) if (args.real / "1ADC_ss").is_dir() else None
    print(f"| statistic (median over cases [min, max]) | real BONBID dev ({'37 cases' if real else 'absent'}) "
          f"| synthetic {args.preset}, {n} cases, seed {args.seed} |")
    print("|---|---|---|")
    for key, value in synth.items():
        print(f"| {key} | {real[key] if real else '-'} | {value} |")
    print(f"\nsynthetic generation: {t_synth:.1f} s for {n} cases ({t_synth / n:.2f} s/case, in memory)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
