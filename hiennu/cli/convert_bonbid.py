"""``hiennu_convert_bonbid SRC -d NNN [--name BONBID]``: official BONBID-HIE layout -> raw dataset."""

from __future__ import annotations

import argparse

from hiennu.cli._common import make_parser, run
from hiennu.errors import HiennuError


def _label_map(items: list[str] | None) -> dict[float, int] | None:
    if not items:
        return None
    mapping = {}
    for item in items:
        try:
            source, target = item.split(":")
            mapping[float(source)] = int(target)
        except ValueError:
            raise HiennuError(f"--label-map {item!r}: expected SOURCE:TARGET with TARGET 0 or 1, e.g. 2:1") from None
    return mapping


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "hiennu_convert_bonbid",
        "Convert a split of the BONBID-HIE release (1ADC_ss/, 2Z_ADC/, 3LABEL/) into "
        "$hiennu_raw/DatasetNNN_NAME (imagesTr/, labelsTr/, imagesTs/ for unlabelled cases).")
    parser.add_argument("src", help="folder holding 1ADC_ss/, 2Z_ADC/ and (for training splits) 3LABEL/")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset number, 1..999")
    parser.add_argument("--name", default="BONBID", help="dataset name")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    parser.add_argument("--label-map", nargs="+", metavar="SOURCE:TARGET",
                        help="map label values to 0/1, e.g. --label-map 0:0 2:1 (default: labels must be 0/1)")
    parser.add_argument("--allow-unlabeled", action="store_true",
                        help="in a labelled split, put cases without a label into imagesTs/ instead of failing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from hiennu.datasets.bonbid import convert_bonbid
        convert_bonbid(args.src, args.dataset_id, name=args.name, overwrite=args.overwrite,
                       label_mapping=_label_map(args.label_map), allow_unlabeled=args.allow_unlabeled)
        return 0

    return run(job, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
