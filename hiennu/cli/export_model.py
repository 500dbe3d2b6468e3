"""``hiennu_export_model``: a trained model as one zip (plans, dataset.json, weights, SHA-256 manifest)."""

from __future__ import annotations

import argparse

from hiennu.cli._common import add_plans_name, make_parser, run
from hiennu.io.checkpoint import DEFAULT_CHECKPOINT_CHOICE


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("hiennu_export_model",
                    "Export a trained model to a zip that hiennu_predict -m and hiennu_install_model accept.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", "--dataset", help="dataset name, DatasetNNN_Name or number")
    src.add_argument("-m", "--model-dir", help="a model folder (TRAINER__PLANS__CONFIG) instead of -d/-tr/-c")
    p.add_argument("-tr", "--trainer", help="trainer class (with -d)")
    p.add_argument("-c", "--configuration", help="configuration (with -d)")
    add_plans_name(p, "plans identifier of the model (with -d): TRAINER__NAME__CONFIG")
    p.add_argument("-f", "--folds", nargs="+", help="folds to export (default: every fold with the checkpoint)")
    p.add_argument("-chk", "--checkpoint", default=DEFAULT_CHECKPOINT_CHOICE,
                   help="final (default, as nnU-Net ships), best (chosen on each fold's own validation cases) or a "
                        "file name checkpoint_NAME.pth")
    p.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    p.add_argument("-o", "--output", required=True, help="the zip to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.inference.model_registry import resolve_model
        from hiennu.inference.model_zip import export_model_zip
        from hiennu.io.checkpoint import checkpoint_file
        model_dir = resolve_model(args.model_dir, args.dataset, args.trainer, args.configuration, args.plans_name)
        export_model_zip(model_dir, args.output, args.folds, checkpoint_file(args.checkpoint), args.half)
        return 0

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
