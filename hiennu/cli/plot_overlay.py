"""``hiennu_plot_overlay -i IMAGES -p MASKS -o PNGS [-r LABELS]``: one PNG per case, its mask (and reference) drawn
on a slice of its image (:mod:`hiennu.evaluation.overlay`); nnU-Net's ``nnUNetv2_plot_overlay_pngs`` for
predictions."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import make_parser, run


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "hiennu_plot_overlay",
        "Draw each predicted mask (orange) and, with -r, its reference (green) on the axial slice of its image with "
        "the most reference voxels (else the most predicted ones), cropped to the brain, with the case's Dice in the "
        "title when the reference is given: OUT/CASE.png per case. Every case is checked (images found, masks binary "
        "and on the image's grid) before any picture is written.")
    p.add_argument("-i", "--images", required=True, type=Path,
                   help="the cases' images, CASE_0000.mha ... (nnU-Net's layout; channel names from a dataset.json in or "
                        "beside the folder, else ADC, ZADC)")
    p.add_argument("-p", "--predictions", required=True, type=Path, help="folder of masks CASE.mha ...")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the PNGs (apart from the inputs)")
    p.add_argument("-r", "--references", type=Path, default=None, help="folder of reference masks CASE.mha ...")
    p.add_argument("--channel", default="ADC", help="the image channel drawn")
    p.add_argument("--cases", nargs="+", default=None, metavar="CASE", help="only these cases (default: every mask)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.evaluation.overlay import plot_overlays
        plot_overlays(args.images, args.predictions, args.output, args.references, args.channel, args.cases)
        return 0

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
