"""``hiennu_export_model``: a trained model, or an ensemble of configurations, as one zip (plans, dataset.json,
weights, SHA-256 manifest); or the rule folder ``DatasetNNN_Name/baseline_zadc`` (rule.json, dataset.json,
postprocessing.json) as a rule zip."""

from __future__ import annotations

import argparse

from hiennu.cli._common import make_parser, run
from hiennu.io.checkpoint import DEFAULT_CHECKPOINT_CHOICE
from hiennu.paths import DEFAULT_PLANS_NAME


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("hiennu_export_model",
                    "Export a trained model to a zip that hiennu_predict -m and hiennu_install_model accept. Two or "
                    "more models (-m A B, or -c 2d 3d_fullres) go into one zip as an ensemble of configurations, "
                    "with the ensemble's post-processing. A rule folder (-m $hiennu_results/DatasetNNN_Name/baseline_zadc, "
                    "the rule ZADC < -2 with its post-processing) exports alone, as a rule zip that installs and "
                    "predicts like a model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", "--dataset", help="dataset name, DatasetNNN_Name or number")
    src.add_argument("-m", "--model-dir", nargs="+", metavar="MODEL_DIR",
                     help="a model folder (TRAINER__PLANS__CONFIG) instead of -d/-tr/-c; two or more, or an ensemble "
                          "folder: their ensemble; or a rule folder (DatasetNNN_Name/baseline_zadc), alone")
    p.add_argument("-tr", "--trainer", nargs="+", metavar="TRAINER",
                   help="trainer class (with -d); one for every configuration, or one per configuration")
    p.add_argument("-c", "--configuration", nargs="+", metavar="CONFIG",
                   help="configuration (with -d); two or more (2d 3d_fullres): their ensemble")
    p.add_argument("-p", "--plans-name", nargs="+", default=DEFAULT_PLANS_NAME, metavar="NAME",
                   help="plans identifier of the model (with -d): TRAINER__NAME__CONFIG; one for every configuration, "
                        "or one per configuration")
    p.add_argument("-f", "--folds", nargs="+",
                   help="folds to export (default: the numbered folds, fold_all only when it is the only one, a "
                        "fold without the checkpoint refused; for an ensemble, the folds its "
                        "members.json names; not for a rule folder)")
    p.add_argument("-chk", "--checkpoint", default=None,
                   help=f"{DEFAULT_CHECKPOINT_CHOICE} (default, as nnU-Net ships; for an ensemble folder, the checkpoint "
                        "its members.json names), best (chosen on each fold's own validation cases) or a file name "
                        "checkpoint_NAME.pth (not for a rule folder, which has no weights)")
    p.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    p.add_argument("-o", "--output", required=True, help="the zip to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.inference.model_zip import export_models
        export_models(args.model_dir, args.dataset, args.trainer, args.configuration, args.plans_name, args.output,
                      args.folds, args.checkpoint, args.half)
        return 0

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
