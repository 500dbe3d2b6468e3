"""``hiennu_install_model``: verify a model zip (or a rule zip) and unpack it under ``$hiennu_results``."""

from __future__ import annotations

import argparse

from hiennu.cli._common import make_parser, run


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("hiennu_install_model",
                    "Check a model zip (safe member names, SHA-256 manifest, weights that load without running "
                    "code) and install it under $hiennu_results. A rule zip (the rule ZADC < -2 with its "
                    "post-processing, from hiennu_export_model -m DatasetNNN_Name/baseline_zadc) installs the same "
                    "way, into DatasetNNN_Name/baseline_zadc.")
    p.add_argument("zip", help="model, ensemble or rule zip written by hiennu_export_model")
    p.add_argument("--default", action="store_true",
                   help="make it (a model, an ensemble or the rule) the model hiennu_predict uses when none is named")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an installed model (or rule folder) of the same name")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.inference.model_zip import install_model_zip
        install_model_zip(args.zip, overwrite=args.overwrite, make_default=args.default)
        return 0

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
