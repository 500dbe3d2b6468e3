"""``hiennu_train_default_model -d DATASET``: the default model in one resumable command (plan, train every
configuration of the recipe on five folds, find the best configuration, export, install as the default)."""

from __future__ import annotations

import argparse

from hiennu.cli._common import add_device, make_parser, run


def build_parser() -> argparse.ArgumentParser:
    from hiennu.postprocessing.candidates import CANDIDATE_SETS
    p = make_parser(
        "hiennu_train_default_model",
        "Train the default model end to end, resumably, with one ETA over all of it: plan and preprocess the dataset "
        "(unless done), train every configuration of the recipe (hiennu.pipeline.default_model.DEFAULT_RECIPE: "
        "3d_fullres, 30 epochs, TrainerDiceFocal) on five folds with --npz, choose its post-processing (the best "
        "configuration or ensemble as well when the recipe has several) by cross-validation, the rule ZADC < -2 "
        "given the same as the reference (--rule-candidate lets it compete) "
        "(hiennu_find_best_configuration), export it to one zip (hiennu_export_model) and install it as the default model (hiennu_install_model --default), so "
        "hiennu_predict -i in/ -o out/ uses it. Run it again after an interruption: finished folds are reused, an "
        "interrupted one is continued; when no fold changed, the last choice (inference_information.json), zip and "
        "install are reused too.")
    p.add_argument("-d", "--dataset", required=True, help="dataset name (BONBID), folder name or number")
    p.add_argument("-o", "--output", default=None, metavar="ZIP",
                   help="the model zip to write (default: $hiennu_results/DatasetNNN_Name/default_model.zip)")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="export the zip only; do not install it as the default model")
    add_device(p)
    p.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads on a CPU while training (default: one per core), as hiennu_train --cpu-threads")
    p.add_argument("-np", "--num-processes", type=int, default=2,
                   help="worker processes of planning/preprocessing and of find_best_configuration")
    p.add_argument("--retrain-mismatched", action="store_true",
                   help="a fold trained otherwise than the recipe (other epochs, plans, seed, hiennu version ...) is "
                        "moved aside (fold_K.replaced-<timestamp>) and trained again; without it the command refuses, "
                        "naming the folds")
    p.add_argument("--rule-candidate", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the rule ZADC < -2 with its post-processing competes with the networks "
                        "(hiennu_find_best_configuration --rule-candidate; it ships as a rule folder when it wins) or is "
                        "only the reference of the choice (default: the options' DEFAULT_CHOICE, see "
                        "documentation/training.md)")
    p.add_argument("--postprocessing-candidates", choices=CANDIDATE_SETS, default=None,
                   help="what each candidate's post-processing is chosen among, as hiennu_find_best_configuration "
                        "--postprocessing-candidates (default: the options' DEFAULT_CHOICE, judged-rule: the rule's "
                        "components after the ADC cap, each judged by the network; cap-filter: the ADC cap + the "
                        "lesion filter against none)")
    p.add_argument("--nested-choice", action=argparse.BooleanOptionalAction, default=None,
                   help="whether to estimate the whole choice fully nested, each outer fold choosing its candidate and "
                        "post-processing on the other folds (hiennu_find_best_configuration --nested-choice; a minute "
                        "or two on BONBID): the chosen one's own nested score is the best of several on the same "
                        "cases and flatters it; the log's last line reports both (default: on, the options' "
                        "DEFAULT_CHOICE)")
    p.add_argument("--rechoose", action="store_true",
                   help="choose by cross-validation, export and install again even when no fold, validation, plans, "
                        "split or raw file changed since the last choice (which is otherwise reused; "
                        "$hiennu_results/DatasetNNN_Name/default_model_state.json records what it was made from)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from hiennu.pipeline.default_model import DefaultModelOptions, train_default_model
        train_default_model(DefaultModelOptions(
            dataset=args.dataset, output=args.output, install=args.install, device=args.device,
            cpu_threads=args.cpu_threads, num_processes=args.num_processes,
            retrain_mismatched=args.retrain_mismatched, rechoose=args.rechoose,
            **{k: v for k, v in (("rule_candidate", args.rule_candidate),
                                 ("postprocessing_candidates", args.postprocessing_candidates),
                                 ("nested_choice", args.nested_choice)) if v is not None}))
        return 0

    return run(go, verbose=not args.quiet, runs_networks=True,
               resume="run the same command again to go on: finished folds are kept and an interrupted one continues")


if __name__ == "__main__":
    raise SystemExit(main())
