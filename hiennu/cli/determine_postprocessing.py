"""``hiennu_determine_postprocessing``: choose a trained model's post-processing on its folds' CV masks."""

from __future__ import annotations

import argparse

from hiennu.cli._common import add_plans_name, make_parser, run


def build_parser() -> argparse.ArgumentParser:
    from hiennu.postprocessing.candidates import ALL_CANDIDATES, CANDIDATE_SETS

    p = make_parser(
        "hiennu_determine_postprocessing",
        "Choose the post-processing of a trained model by cross-validation, as nnU-Net does: every candidate "
        "(component sizes, the ZADC rule, ADC caps, lesion filters) is scored on the validation masks of the "
        "trained folds against the raw labels; the best one that beats no post-processing is written to the "
        "model folder's postprocessing.json, which hiennu_predict applies. Prints every candidate's pooled and "
        "nested Dice, MASD and NSD.")
    p.add_argument("-d", "--dataset", required=True, help="dataset name, DatasetNNN_Name or number")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-tr", "--trainer", help="trainer class of the model")
    which.add_argument("--rule", action="store_true",
                       help="choose the rule ZADC < -2's own post-processing instead, on its masks over the folds of "
                            "splits_final.json, and write the rule folder $hiennu_results/DatasetNNN_Name/baseline_zadc/ "
                            "(postprocessing.json, dataset.json, rule.json), which predicts like a model: hiennu_predict "
                            "-m FOLDER, hiennu_export_model -m FOLDER")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rule and (args.configuration or args.split_seed is not None):
        parser.error("--rule is chosen on the folds of splits_final.json: leave out -c and --split-seed")

    def go() -> int:
        if args.rule:
            return rule()
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

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
