"""``hiennu_ensemble -i DIR1 DIR2 [...] -o OUT``: nnU-Net's ``nnUNetv2_ensemble``, the mean of saved probability
maps (:mod:`hiennu.ensembling.ensemble_folders`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import add_alias, make_parser, run


def build_parser() -> argparse.ArgumentParser:
    from hiennu.io.image import IMAGE_ENDINGS

    p = make_parser(
        "hiennu_ensemble",
        "Ensemble predictions saved by separate runs, as nnUNetv2_ensemble: each input folder holds one model's "
        "probability maps of the same cases (CASE_prob.npz from hiennu_predict --save-probabilities npz, or a "
        "fold's CASE.npz from hiennu_train --npz); each case's mask is the mean of its maps >= 0.5, on its native "
        "grid, the same as hiennu_predict -m with those models. No post-processing is applied: apply an "
        "ensemble's postprocessing.json afterwards with hiennu_apply_postprocessing (--probabilities OUT needs "
        "--save-probabilities here). Every input is checked before anything is written.")
    p.add_argument("-i", "--input", nargs="+", required=True, type=Path, metavar="DIR",
                   help="two or more folders of probability maps of the same cases")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (apart from every input)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write each case's mean map, CASE_prob.npz (what a judged-rule post-processing asks)")
    add_alias(p, "--save_npz", dest="save_probabilities", action="store_true")
    p.add_argument("--file-ending", choices=IMAGE_ENDINGS, default=None,
                   help="the masks' file ending (default: that of the case's mask beside its map in the first "
                        "folder, else .mha)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.ensembling.ensemble_folders import ensemble_folders
        ensemble_folders(args.input, args.output, args.save_probabilities, args.file_ending)
        return 0

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
