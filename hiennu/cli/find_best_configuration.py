"""``hiennu_find_best_configuration -d DATASET -c 2d 3d_fullres [-tr ...] [-p ...] [--select-by ...]
[--nested-choice]``: choose among trained configurations and their ensembles by cross-validation, each with its
own post-processing. ``-m TRAINER__PLANS__CONFIG ...`` names the models instead of every combination of ``-c``,
``-tr`` and ``-p``.

The default choice (``--select-by postprocessed``) differs from nnU-Net's: by the nested Dice with each
candidate's own post-processing, because on BONBID post-processing carries most of the score and its nested
estimate can lie 0.09 Dice under the pooled one (:mod:`hiennu.ensembling.choice`); ``--select-by raw`` is
nnU-Net's rule. ``--nested-choice`` also estimates the whole choice fully nested
(:mod:`hiennu.ensembling.nested_choice`)."""

from __future__ import annotations

import argparse

from hiennu.cli._common import add_positional_spelling, make_parser, merge_positional, run
from hiennu.paths import DEFAULT_PLANS_NAME, parse_dataset_folder_name


def build_parser() -> argparse.ArgumentParser:
    from hiennu.ensembling.best_configuration import DEFAULT_FOLDS, DEFAULT_TRAINER
    from hiennu.ensembling.choice import POSTPROCESSED, SELECT_BY
    from hiennu.ensembling.ensemble_cv import ENSEMBLE_SETS, EVERY, NO_ENSEMBLES
    from hiennu.postprocessing.candidates import ALL_CANDIDATES, CANDIDATE_SETS

    p = make_parser(
        "hiennu_find_best_configuration",
        "Score every trained configuration and (by default) every ensemble of two or more (members' mean "
        "probability >= 0.5) "
        "on the pooled cross-validation cases with Dice, MASD and NSD (95% bootstrap intervals), each also with its "
        "own post-processing chosen on its CV masks (pooled and nested estimates), beside the rule ZADC < -2 given "
        "the same; choose the best (by default by the nested Dice with post-processing, see --select-by), test it "
        "against the rule + post-processing (paired Wilcoxon, Holm); write "
        "$hiennu_results/DatasetNNN_Name/inference_information.json and print the hiennu_predict command. Every "
        "fold must have been trained with --npz (or re-validated: hiennu_train ... --val --npz), as nnU-Net's "
        "nnUNetv2_find_best_configuration.")
    p.add_argument("-d", "--dataset", default=None, help="dataset name, DatasetNNN_Name or number")
    add_positional_spelling(p, "dataset", "DATASET", "the dataset, as nnU-Net's positional dataset_name_or_id "
                                                     "(hiennu_find_best_configuration 1 -c 2d 3d_fullres); or -d")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-c", "--configurations", nargs="+", metavar="CONFIG",
                       help="configurations to compare, e.g. 2d 3d_fullres (every combination with -tr and -p is "
                            "one model)")
    which.add_argument("-m", "--models", nargs="+", metavar="MODEL",
                       help="model folders by name, TRAINER__PLANS__CONFIG, instead of -c/-tr/-p: for a set that "
                            "is not every combination, e.g. TrainerDiceFocal__hiennuPlans__2d "
                            "TrainerDice__hiennuPlans__2d TrainerDiceFocal__hiennuPlans__3d_fullres")
    p.add_argument("-tr", "--trainers", nargs="+", metavar="TRAINER",
                   help=f"trainer classes of the models, with -c (default: {DEFAULT_TRAINER})")
    p.add_argument("-p", "--plans", nargs="+", metavar="NAME",
                   help=f"plans identifiers of the models (-p of hiennu_train), with -c "
                        f"(default: {DEFAULT_PLANS_NAME})")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=list(DEFAULT_FOLDS),
                   help="folds of splits_final.json whose validation cases are pooled")
    ensembles = p.add_mutually_exclusive_group()
    ensembles.add_argument("--ensembles", choices=ENSEMBLE_SETS, default=EVERY,
                           help="which ensembles are candidates beside the models: every one of two or more models "
                                "(nnU-Net's scores pairs only: --max-ensemble-size 2), only the one of all the models (an ensemble fixed in advance, scored "
                                "without choosing among subsets), or none")
    ensembles.add_argument("--no-ensembles", "--disable_ensembling", dest="ensembles", action="store_const",
                           const=NO_ENSEMBLES, help="the same as --ensembles none: score the models alone "
                                                    "(--disable_ensembling: nnU-Net's spelling)")
    p.add_argument("--max-ensemble-size", type=int, metavar="K",
                   help="with --ensembles every: ensembles of at most K models (2: nnU-Net's pairs); n models make "
                        "2^n - n - 1 ensembles of any size, each scored with its own post-processing (default: any "
                        "size)")
    p.add_argument("--select-by", choices=SELECT_BY, default=POSTPROCESSED,
                   help="postprocessed (default): the highest nested Dice with the candidate's own post-processing, "
                        "what ships (on BONBID post-processing carries most of the score and its nested estimate "
                        "can lie 0.09 Dice under the pooled one); raw: the highest Dice without post-processing, "
                        "nnU-Net's rule")
    p.add_argument("--nested-choice", action="store_true",
                   help="also estimate the whole choice fully nested: for each fold, every candidate's post-processing "
                        "and the candidate chosen on the other folds only (by --select-by), applied to the fold; "
                        "pooled, it is what the choice scores on cases it never saw (the chosen one's own nested "
                        "Dice is the best of K on the same cases). Needs 3 folds or more; off by default because "
                        "it makes the run 1.6-2x longer (K(K-1)/2 more post-processing choices per candidate; on "
                        "the 37 BONBID dev cases with 3 candidates 7.9 min instead of 4.9)")
    p.add_argument("--postprocessing-candidates", choices=CANDIDATE_SETS, default=ALL_CANDIDATES,
                   help="what each candidate's (and the rule's) post-processing is chosen among, as "
                        "hiennu_determine_postprocessing --candidates: all, cap-filter (the ADC cap at the 99.5th "
                        "percentile + the lesion filter, against none), or judged-rule (the rule's components after "
                        "that cap, each kept or dropped by a lesion filter that also asks the network: its mean "
                        "probability over the component; an ensemble asks the mean of its members; the rule itself, "
                        "with no network to ask, gets cap-filter). A model folder's existing postprocessing.json "
                        "chosen otherwise is kept and the difference said; delete it to replace it")
    p.add_argument("--rule-candidate", action="store_true",
                   help="the rule ZADC < -2 with its own post-processing (chosen the same way) competes with the "
                        "models instead of being only the reference; when it wins it is written as the rule folder "
                        "$hiennu_results/DatasetNNN_Name/baseline_zadc/ (predicts with hiennu_predict -m, exports "
                        "with hiennu_export_model like a model) and the best model is tested against it")
    p.add_argument("-np", "--num-processes", type=int, default=2,
                   help="worker processes for scoring the cases and choosing each candidate's post-processing")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    merge_positional(parser, args, "dataset", "-d/--dataset",
                     looks_positional=lambda value: isinstance(value, str) and bool(
                         value.isdigit() or parse_dataset_folder_name(value)))
    if args.models and (args.trainers or args.plans):
        parser.error("-m names each model's trainer and plans: leave out -tr and -p")

    def go() -> int:
        from hiennu.ensembling.best_configuration import FindBestOptions, find_best_configuration
        from hiennu.ensembling.table import table
        named = {key: value for key, value in (("trainers", args.trainers), ("plans", args.plans)) if value}
        result = find_best_configuration(FindBestOptions(
            dataset=args.dataset, configurations=args.configurations or (), models=args.models or (), **named,
            folds=args.folds, ensembles=args.ensembles, max_ensemble_size=args.max_ensemble_size,
            num_processes=args.num_processes, select_by=args.select_by,
            nested_choice=args.nested_choice, postprocessing_candidates=args.postprocessing_candidates,
            rule_candidate=args.rule_candidate))
        if args.quiet:  # -q: warnings and errors only; everything is in inference_information.json
            return 0
        print(table(result.information), end="")
        print(f"written to {result.path}")
        return 0

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
