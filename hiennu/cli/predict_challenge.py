"""``hiennu_predict_challenge``: the BONBID-HIE challenge container interface, end to end."""

from __future__ import annotations

import argparse

from hiennu.cli._common import add_alias, add_device, make_parser, run


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "hiennu_predict_challenge",
        "Read INPUT/images/skull-stripped-adc-brain-mri/*.mha and INPUT/images/z-score-adc/*.mha "
        "(one case) and write OUTPUT/images/hie-lesion-segmentation/overlay.mha.")
    p.add_argument("--input", default="/input", help="input root")
    p.add_argument("--output", default="/output", help="output root")
    p.add_argument("-m", "--model", nargs="+", metavar="MODEL",
                   help="model folder, ensemble folder, rule folder (DatasetNNN_Name/baseline_zadc) or zip (default: the "
                        "default model, which may be an ensemble or the rule); "
                        "two or more: an ensemble of configurations")
    p.add_argument("-f", "--folds", nargs="+", help="folds to ensemble (default: the numbered folds, fold_all only "
                                                    "when it is the only one; a fold whose training has not finished "
                                                    "is refused)")
    p.add_argument("-chk", "--checkpoint", default=None,
                   help="final, best or a file name in each fold folder (default: final; best when none of "
                        "the folds has final)")
    add_device(p)
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    add_alias(p, "--disable_tta", dest="disable_tta", action="store_true")
    p.add_argument("--baseline", choices=["zadc"], help="ZADC < -2 inside the brain instead of a model")
    p.add_argument("--min-component-voxels", type=int,
                   help="remove lesion components smaller than this (default: the larger of the plans' value "
                        "and the model's postprocessing.json choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.inference.challenge import run_challenge
        from hiennu.inference.predictor import build_predictor
        from hiennu.io.checkpoint import checkpoint_file
        checkpoint = checkpoint_file(args.checkpoint) if args.checkpoint and not args.baseline else None
        predictor = build_predictor(args.model, None, None, None, args.folds, checkpoint, args.device,
                                    not args.disable_tta, args.baseline, args.min_component_voxels)
        run_challenge(predictor, args.input, args.output)
        return 0

    return run(go, verbose=not args.quiet, runs_networks=True)


if __name__ == "__main__":
    raise SystemExit(main())
