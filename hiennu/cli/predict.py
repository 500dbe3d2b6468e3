"""``hiennu_predict``: lesion masks for every case of a folder, in each input's native geometry."""

from __future__ import annotations

import argparse

from hiennu.cli._common import add_alias, add_device, make_parser, run
from hiennu.paths import DEFAULT_PLANS_NAME


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "hiennu_predict",
        "Predict HIE lesion masks for every case in a folder (nnU-Net CASE_0000/CASE_0001 names, the "
        "official BONBID names flat or in 1ADC_ss/ + 2Z_ADC/, or the challenge layout; .mha, .nii.gz, "
        ".nii, .nrrd). Each mask has its input's exact size, spacing, origin and direction (uint8). "
        "With no model named, the default model is used. Two or more models (-m A B, or -c 2d 3d_fullres) "
        "predict as an ensemble of configurations.")
    p.add_argument("-i", "--input", required=True, help="input folder")
    p.add_argument("-o", "--output", required=True, help="output folder (not the input folder or inside it)")
    p.add_argument("-m", "--model", nargs="+", metavar="MODEL",
                   help="a model folder (TRAINER__PLANS__CONFIG), an ensemble folder, a rule folder (DatasetNNN_Name/"
                        "baseline_zadc: the rule ZADC < -2 with its post-processing) or a zip from hiennu_export_model; "
                        "two or more models: an ensemble of configurations, their probabilities averaged")
    p.add_argument("-d", "--dataset", help="dataset name, DatasetNNN_Name or number (model under $hiennu_results)")
    p.add_argument("-tr", "--trainer", nargs="+", metavar="TRAINER",
                   help="trainer class of the model (with -d); one for every configuration, or one per configuration")
    p.add_argument("-c", "--configuration", nargs="+", metavar="CONFIG",
                   help="configuration of the model (with -d), e.g. 3d_fullres; two or more (2d 3d_fullres): their "
                        "ensemble")
    p.add_argument("-p", "--plans-name", nargs="+", default=DEFAULT_PLANS_NAME, metavar="NAME",
                   help="plans identifier of the model (with -d): TRAINER__NAME__CONFIG; one for every configuration, "
                        "or one per configuration")
    p.add_argument("-f", "--folds", nargs="+",
                   help="folds to ensemble (numbers or 'all'; default: the numbered folds, fold_all only when it is the "
                        "only one, a fold whose training has not finished refused; for an ensemble, the folds its "
                        "members.json names)")
    p.add_argument("-chk", "--checkpoint", default=None,
                   help="final, best or a file name checkpoint_NAME.pth in each fold folder (default: final, "
                        "as nnU-Net; best when none of the folds has final, for models exported before final was the "
                        "default; "
                        "for an ensemble, the one its members.json names)")
    add_device(p)
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation (faster)")
    add_alias(p, "--disable_tta", dest="disable_tta", action="store_true")
    p.add_argument("--save-probabilities", nargs="?", const="npz", choices=["npz", "image"],
                   help="also write CASE_prob.npz (npz, the value without an argument) or CASE_prob.<ending> "
                        "(image) per case")
    add_alias(p, "--save_probabilities", dest="save_probabilities", nargs="?", const="npz", choices=["npz", "image"])
    p.add_argument("--continue-prediction", action="store_true", help="skip cases whose outputs already exist")
    add_alias(p, "--continue_prediction", "--c", dest="continue_prediction", action="store_true")
    p.add_argument("--baseline", choices=["zadc"], help="predict ZADC < -2 inside the brain instead of using a model")
    p.add_argument("--postprocessing", metavar="FILE",
                   help="with --baseline: a postprocessing.json to apply to its masks (hiennu_determine_postprocessing "
                        "--rule writes the rule's, e.g. $hiennu_results/Dataset001_BONBID/baseline_zadc/"
                        "postprocessing.json)")
    p.add_argument("--min-component-voxels", type=int,
                   help="remove lesion components smaller than this (default: the larger of the plans' value and the "
                        "model's postprocessing.json choice; for --baseline, that of --postprocessing, else 0)")
    p.add_argument("--batch-size", type=int, help="cases per forward pass (default 4 on CUDA, 1 on CPU)")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="on a CPU, run the network under bfloat16 autocast: faster on CPUs with native bf16 "
                        "(AVX512-BF16, AMX), not bit-identical to float32 (CUDA always uses bf16)")
    p.add_argument("--preprocess-ahead", type=int, default=4, metavar="N",
                   help="cases read and preprocessed (in a background thread) ahead of the network; nnU-Net's "
                        "-npp is accepted for it")
    add_alias(p, "-npp", dest="preprocess_ahead", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.inference.predictor import build_predictor
        from hiennu.io.checkpoint import checkpoint_file
        checkpoint = checkpoint_file(args.checkpoint) if args.checkpoint and not args.baseline else None
        predictor = build_predictor(args.model, args.dataset, args.trainer, args.configuration, args.folds,
                                    checkpoint, args.device, not args.disable_tta, args.baseline,
                                    args.min_component_voxels, args.batch_size, plans_name=args.plans_name,
                                    cpu_bf16=args.cpu_bf16, baseline_postprocessing=args.postprocessing)
        report = predictor.predict_folder(args.input, args.output, save_probabilities=bool(args.save_probabilities),
                                          probability_format=args.save_probabilities or "npz",
                                          continue_prediction=args.continue_prediction,
                                          queue_size=args.preprocess_ahead)
        return 0 if report.ok else 1

    return run(go, verbose=not args.quiet, runs_networks=True)


if __name__ == "__main__":
    raise SystemExit(main())
