"""``hiennu_determine_postprocessing``: choose a trained model's post-processing on its folds' CV masks, the rule's,
or that of a folder of cross-validation masks (``-i``, as ``nnUNetv2_determine_postprocessing -i -ref``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiennu.cli._common import add_plans_name, make_parser, run


def build_parser() -> argparse.ArgumentParser:
    from hiennu.postprocessing.candidates import ALL_CANDIDATES, CANDIDATE_SETS

    p = make_parser(
        "hiennu_determine_postprocessing",
        "Choose the post-processing of a trained model by cross-validation, as nnU-Net does: every candidate "
        "(component sizes, the ZADC rule, ADC caps, lesion filters) is scored on the validation masks of the "
        "trained folds against the raw labels; the best one that beats no post-processing is written to the "
        "model folder's postprocessing.json, which hiennu_predict applies. Prints every candidate's pooled and "
        "nested Dice, MASD and NSD. With -i, the same choice on any folder of cross-validation masks (nnU-Net's "
        "crossval_results_folds_0_1_2_3_4, another tool's out-of-fold masks), written to FOLDER/postprocessing.json "
        "for hiennu_apply_postprocessing -pp.")
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset name, DatasetNNN_Name or number (with -i it may be left out when -ref names its "
                        "labelsTr)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-tr", "--trainer", help="trainer class of the model")
    which.add_argument("--rule", action="store_true",
                       help="choose the rule ZADC < -2's own post-processing instead, on its masks over the folds of "
                            "splits_final.json, and write the rule folder $hiennu_results/DatasetNNN_Name/baseline_zadc/ "
                            "(postprocessing.json, dataset.json, rule.json), which predicts like a model: hiennu_predict "
                            "-m FOLDER, hiennu_export_model -m FOLDER")
    which.add_argument("-i", "--input", metavar="FOLDER",
                       help="choose on this folder of cross-validation masks (CASE.mha ..., each on its label's native "
                            "grid, made without post-processing) instead of a model's; each case must be a validation "
                            "case of one fold of --splits")
    p.add_argument("-ref", "--reference", metavar="LABELS", default=None,
                   help="with -i: the labelsTr folder of the raw dataset the masks are scored against (its images "
                        "and dataset.json lie beside it); default: -d's")
    p.add_argument("--splits", metavar="JSON", default=None,
                   help="with -i: the folds file that says which fold held each mask out (hiennu's or nnU-Net's "
                        "splits_final.json; default: the preprocessed dataset's own)")
    p.add_argument("-o", "--output", metavar="JSON", default=None,
                   help="with -i: where the record goes (default: FOLDER/postprocessing.json, as nnU-Net)")
    p.add_argument("--probabilities", metavar="DIR", default=None,
                   help="with -i and --candidates judged-rule: the masks' probabilities, CASE.npz or CASE_prob.npz "
                        "(default: the -i folder)")
    p.add_argument("-c", "--configuration", default=None,
                   help="configuration of the model (default: the only one trained with this trainer and plans)")
    add_plans_name(p, "plans identifier of the model (-p of hiennu_train)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                   help="folds whose validation masks are pooled")
    p.add_argument("--split-seed", type=int, default=None, help="the model trained on the folds of this split seed")
    p.add_argument("--candidates", choices=CANDIDATE_SETS, default=ALL_CANDIDATES,
                   help="what the choice is made among: all (about 30: component sizes, the ZADC rule, three ADC "
                        "caps, lesion filters), cap-filter (one recipe against none: the ADC cap at the 99.5th "
                        "percentile of the lesions' ADC, then the lesion filter fitted after it; fewer ways to "
                        "fit the noise of a few dozen cases) or judged-rule (one recipe too: the rule's mask in place "
                        "of the model's, the same cap, then a lesion filter that also asks the network, its mean "
                        "probability over each component; needs the folds' probabilities, hiennu_train --npz; not "
                        "for --rule, which has no network)")
    p.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    from hiennu.paths import DEFAULT_PLANS_NAME
    from hiennu.postprocessing.candidates import JUDGED_RULE
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rule and (args.configuration or args.split_seed is not None):
        parser.error("--rule is chosen on the folds of splits_final.json: leave out -c and --split-seed")
    folder_only = [flag for flag, value in (("-ref", args.reference), ("--splits", args.splits), ("-o", args.output),
                                            ("--probabilities", args.probabilities)) if value is not None]
    if args.input is None and folder_only:
        parser.error(f"{', '.join(folder_only)} only go with -i FOLDER (a folder of cross-validation masks)")
    if args.input is not None:
        model_only = [flag for flag, value in (("-c", args.configuration), ("--split-seed", args.split_seed))
                      if value is not None] + (["-f"] if args.folds != [0, 1, 2, 3, 4] else []) \
            + (["-p"] if args.plans_name != DEFAULT_PLANS_NAME else [])
        if model_only:
            parser.error(f"{', '.join(model_only)} name a trained model's folds or plans; with -i the folds are those of "
                         f"--splits that hold the folder's masks out")
        if args.probabilities is not None and args.candidates != JUDGED_RULE:
            parser.error(f"--probabilities is read by --candidates {JUDGED_RULE} only (its lesion filter asks the "
                         f"network); leave it out, or choose with --candidates {JUDGED_RULE}")
        if args.dataset is None and args.reference is None:
            parser.error("-i needs the raw dataset the masks are scored against: -d DATASET or -ref ITS_labelsTr")
    elif args.dataset is None:
        parser.error("the following arguments are required: -d/--dataset")

    def go() -> int:
        if args.rule:
            return rule()
        if args.input is not None:
            return folder()
        from hiennu.postprocessing.commands import determine_postprocessing, find_model_folder, raw_dataset_of
        from hiennu.paths import ModelFolder
        model_dir = find_model_folder(args.dataset, args.trainer, args.configuration, args.plans_name,
                                      args.split_seed)
        record, table = determine_postprocessing(model_dir, raw_dataset_of(args.dataset), args.folds,
                                                 write=not args.dry_run, candidate_set=args.candidates)
        if args.quiet:  # -q: warnings and errors only; the table and the choice are in postprocessing.json
            return 0
        print(table, end="")
        print(f"chosen: {record['chosen_name']} (among {record['num_candidates']} candidates; nested CV Dice "
              f"{record['nested']['cv_dice']:.4f})"
              + ("" if args.dry_run else f"; written to {ModelFolder(model_dir).postprocessing}"))
        return 0

    def rule() -> int:
        from hiennu.ensembling.cv_probabilities import split_validation_cases
        from hiennu.paths import preprocessed_root, raw_root, resolve_dataset
        from hiennu.postprocessing.commands import determine_rule_postprocessing
        dataset = resolve_dataset(args.dataset, [raw_root()])
        fold_cases = split_validation_cases(preprocessed_root() / dataset, args.folds)
        record, table, path = determine_rule_postprocessing(dataset, fold_cases, write=not args.dry_run,
                                                            candidate_set=args.candidates)
        if args.quiet:
            return 0
        print(table, end="")
        print(f"chosen for the rule ZADC < -2: {record['chosen_name']} (among {record['num_candidates']} candidates; "
              f"nested CV Dice {record['nested']['cv_dice']:.4f})"
              + ("" if args.dry_run else f"; written to {path.parent} (a rule folder: {path.name}, dataset.json, "
                                         f"rule.json)\npredict with:\n  hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER "
                                         f"-m {path.parent}\nor ship it: hiennu_export_model -m {path.parent} -o RULE.zip"))
        return 0

    def folder() -> int:
        from hiennu.postprocessing.commands import candidate_table
        from hiennu.postprocessing.folder_choice import (apply_command, determine_folder_postprocessing,
                                                         folder_raw_dataset)
        from hiennu.ensembling.cv_probabilities import splits_file_validation_cases
        from hiennu.paths import preprocessed_root, splits_file_name
        raw_dir = folder_raw_dataset(args.dataset, args.reference)
        splits = Path(args.splits) if args.splits else preprocessed_root() / raw_dir.name / splits_file_name()
        fold_cases = splits_file_validation_cases(
            splits, None, f"the folds of the masks are read from it; give the folds file they were predicted on "
                          f"with --splits, or run hiennu_plan_and_preprocess -d {raw_dir.name}",
            "give the folds file the masks were predicted on with --splits")
        details: dict = {}
        record, path = determine_folder_postprocessing(args.input, raw_dir, fold_cases, splits, args.output,
                                                       args.probabilities, args.candidates, write=not args.dry_run,
                                                       details=details)
        if args.quiet:
            return 0
        print(candidate_table(record, details), end="")
        print(f"chosen: {record['chosen_name']} (among {record['num_candidates']} candidates; nested CV Dice "
              f"{record['nested']['cv_dice']:.4f})"
              + ("" if args.dry_run else f"; written to {path}\napply it with:\n  {apply_command(record, path)}"))
        return 0

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
