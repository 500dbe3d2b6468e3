"""``hiennu_evaluate``: score a folder of predicted masks against reference masks."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import make_parser, run, swallowed_hint


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "hiennu_evaluate",
        "Dice, MASD, NSD (2 mm), HD95, volume difference and lesion detection of predicted masks "
        "against reference masks (matched by case id), on each case's native grid. Writes "
        "summary.json and a per-case CSV beside it.")
    parser.add_argument("-ref", type=Path, default=None, help="folder of reference masks (CASE.mha or CASE_lesion.mha)")
    parser.add_argument("-pred", type=Path, default=None, help="folder of predicted masks (CASE.mha, ...)")
    parser.add_argument("folders", nargs="*", type=Path, default=[], metavar="REF PRED",
                        help="nnUNetv2_evaluate_folder's positional gt_folder pred_folder: the same as -ref REF -pred "
                             "PRED (options may stand between them)")
    parser.add_argument("-o", type=Path, default=None, help="summary JSON to write (default: PRED/summary.json)")
    parser.add_argument("-img", type=Path, default=None,
                        help="folder of the cases' ADC maps (CASE_0000.* or official names): brain volumes for "
                             "the lesion volume bands; without it no bands are reported")
    parser.add_argument("--challenge-2023", action="store_true",
                        help="reproduce the 2023 official scorer (spacing in (x, y, z) order on (z, y, x) arrays)")
    parser.add_argument("--cases", nargs="+", default=None, help="score only these case ids (default: all)")
    parser.add_argument("-np", "--num-processes", dest="np", type=int, default=2, help="worker processes")
    return parser


def take_positional_folders(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill ``-ref`` / ``-pred`` from the positional folders: two are REF PRED; one fills whichever of the two flags
    is missing (``-ref L P``); anything else is the parser's usage error saying what is missing or extra."""
    folders = list(args.folders)
    del args.folders
    missing = [flag for flag in ("ref", "pred") if getattr(args, flag) is None]
    if len(folders) > 2 or len(folders) > len(missing) and len(folders) != 2:
        parser.error(f"too many folders: {' '.join(map(str, folders))}; give REF PRED, or -ref REF -pred PRED")
    if len(folders) == 2:
        for flag, folder in zip(("ref", "pred"), folders):
            given = getattr(args, flag)
            if given is not None and given != folder:
                parser.error(f"-{flag} {given} and the positional {folder} both given; give the {flag} folder once")
            setattr(args, flag, folder)
    else:
        for flag, folder in zip(missing, folders):
            setattr(args, flag, folder)
    still = [f"-{flag}" for flag in ("ref", "pred") if getattr(args, flag) is None]
    if still:
        parser.error(f"the following arguments are required: {', '.join(still)} (or the folders positionally, as "
                     f"nnU-Net's: REF PRED){swallowed_hint(parser, args, lambda value: Path(value).is_dir())}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # nnU-Net's "GT -np 2 PRED": options between the two folders
    take_positional_folders(parser, args)

    def _run() -> int:
        from hiennu.evaluation.evaluate import evaluate_folders, per_case_csv_path
        from hiennu.log import get_logger
        output = args.o if args.o is not None else args.pred / "summary.json"
        evaluate_folders(args.ref, args.pred, output_json=output, images_dir=args.img,
                         challenge_2023=args.challenge_2023, num_processes=args.np, case_ids=args.cases)
        get_logger(__name__).info("wrote %s and %s", output, per_case_csv_path(output))
        return 0

    return run(_run, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
