"""``hiennu_make_synthetic [-d NNN] [--name SYNTHETIC] [--cases N] [--seed S] [--preset small|bonbid]``."""

from __future__ import annotations

import argparse

from hiennu.cli._common import make_parser, run
from hiennu.datasets.synthetic import DEFAULT_SYNTHETIC_ID, DEFAULT_SYNTHETIC_NAME, PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "hiennu_make_synthetic",
        "Write the embedded synthetic BONBID-like dataset (ADC + ZADC + lesion masks) to "
        "$hiennu_raw/DatasetNNN_NAME, or to --output.")
    parser.add_argument("-d", "--dataset-id", type=int, default=DEFAULT_SYNTHETIC_ID, help="dataset number")
    parser.add_argument("--name", default=DEFAULT_SYNTHETIC_NAME, help="dataset name")
    parser.add_argument("-o", "--output", help="write to this folder instead of $hiennu_raw/DatasetNNN_NAME")
    parser.add_argument("--cases", type=int, default=None,
                        help="number of cases (default: " + ", ".join(f"{k} {v.num_cases}" for k, v in PRESETS.items()) + ")")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS),
                        help="small: CPU-demo sizes; bonbid: the real BONBID sizes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from hiennu.datasets.synthetic import make_synthetic_dataset
        make_synthetic_dataset(args.output or args.dataset_id, num_cases=args.cases, seed=args.seed,
                               preset=args.preset, name=args.name, overwrite=args.overwrite)
        return 0

    return run(job, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
