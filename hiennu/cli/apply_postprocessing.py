"""``hiennu_apply_postprocessing``: apply a ``postprocessing.json`` to masks already predicted."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import make_parser, run


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "hiennu_apply_postprocessing",
        "Apply a post-processing record (postprocessing.json, as hiennu_determine_postprocessing writes it) to a "
        "folder of predicted masks. Records that read the images (ADC cap, ZADC rule, lesion filter) need "
        "--images; a judged-rule record (its lesion filter asks the network) also needs --probabilities. Every "
        "input is checked before any output is written.")
    p.add_argument("-i", "--input", required=True, type=Path, help="folder of predicted masks (CASE.mha ...)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (not the input folder)")
    p.add_argument("-pp", "--postprocessing", required=True, type=Path, help="the postprocessing.json to apply")
    p.add_argument("--images", type=Path, default=None,
                   help="folder of the cases' raw channels (CASE_0000 = ADC, CASE_0001 = ZADC unless a dataset.json "
                        "in or beside it names them otherwise); needed when the record uses the images (default: none)")
    p.add_argument("--probabilities", type=Path, default=None, metavar="DIR",
                   help="folder of the cases' network probabilities, CASE_prob.npz (hiennu_predict --save-probabilities "
                        "npz; often the masks' own folder) or CASE.npz; needed by a judged-rule record")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.postprocessing.commands import apply_to_folder
        apply_to_folder(args.input, args.output, args.postprocessing, args.images, args.probabilities)
        return 0

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
