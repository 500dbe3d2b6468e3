"""Honest cross-validated scores of post-processing chosen by CV, for a trained model and for the ZADC rule.

nnU-Net chooses post-processing on the pooled cross-validation predictions and reports the pooled
score of the winner, which is optimistic (the best of ~30 candidates on the same cases, lesion filters
fitted on them). This script also scores the *nested* choice with every challenge metric: for each fold,
the ADC caps are derived, the lesion filters fitted and the candidate chosen on the other folds' cases
only, then applied to the held-out fold; the
resulting masks are written and scored with ``evaluate_folders`` (Dice, MASD, NSD with bootstrap
intervals, HD95, lesion recall/precision, Dice by lesion-size band).

The same is done for the plain rule ZADC < -2 inside the brain (every case predicted by the rule,
folds from ``splits_final.json``; :mod:`hiennu.postprocessing.rule_reference`, as
``hiennu_find_best_configuration`` does it), so that the gain of the post-processing is not mistaken for a
gain of the network.

Usage (the BONBID dev set as converted and preprocessed in results.md)::

    python benchmarks/postprocessing_cv.py -d BONBID -m TrainerDiceFocal__Veto__3d_fullres -o /tmp/ppcv
    python benchmarks/postprocessing_cv.py -d BONBID -o /tmp/ppcv_rule      # the rule alone, no model
    python benchmarks/postprocessing_cv.py -d BONBID -m MODEL -o /tmp/ppcv_fixed --candidates cap-filter

``--candidates cap-filter`` makes every choice (the model's and the rule's, pooled and nested) between one recipe
and none, the ADC cap at the 99.5th percentile followed by the lesion filter (``hiennu_determine_postprocessing
--candidates``), instead of among about 30.

With a model, the model + its nested post-processing is tested against the rule + its own nested
post-processing over the same cases: the paired two-sided Wilcoxon signed-rank test on Dice, MASD and NSD,
Holm-corrected across the three, with n (pairs) beside each; MASD pairs only the cases where both give a
defined MASD (:mod:`hiennu.study.postprocessed_comparison`). Every table shows MASD's n (the cases where it
is defined) and MASD over the cases common to all its rows (:func:`hiennu.evaluation.report.method_rows`).

Split noise: ``--split-seed S`` scores the folds of split seed ``S`` (``splits_seed{S}.json`` in the
preprocessed dataset, written from the fingerprint when absent; ``splits_final.json`` is never rewritten;
a model's folds of that seed are read from ``$hiennu_results/DatasetNNN_Name/split_seed_S/MODEL``).
``--split-seeds default 0 1 2 3 4`` runs several splits in one call (``default``: ``splits_final.json``),
each into ``OUT/split_<seed>/``, and writes ``OUT/split_seeds.md``: every split's numbers and their mean
and SD (ddof=1) over the splits, and with a model its margin over the rule split by split, with the margin's
mean and SD over the splits and the number of splits where the model is the better::

    python benchmarks/postprocessing_cv.py -d BONBID -o /tmp/ppcv_splits --split-seeds default 0 1 2 3 4 \
        --splits-dir /tmp/ppcv_splits/splits     # leaves the preprocessed folder unwritten

It does not change the model folder (no ``postprocessing.json`` is written; ``hiennu_loss_study``
writes that). Output: ``OUT/<method>/{plain,nested}/`` masks with ``summary.json``, and ``OUT/table.md``
(with ``--split-seeds``, one such folder per split under ``OUT/split_<seed>/``, and ``OUT/split_seeds.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.postprocessing.candidates import ALL_CANDIDATES, CANDIDATE_SETS, needs_probabilities, rule_candidate_set
from hiennu.postprocessing.selection import (CaseImages, all_candidates, choose, load_cases, nested_estimate, score,
                                             validation_cases)
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.image import read_image, write_image
from hiennu.paths import ModelFolder, raw_root, resolve_dataset
from hiennu.errors import HiennuError
from hiennu.evaluation import report
from hiennu.postprocessing.selection import plans_size_rule
from hiennu.paths import splits_file_name
from hiennu.evaluation.paired_comparison import PAIRED_NOTE, paired_against_rule, paired_markdown
from hiennu.postprocessing.rule_reference import load_rule_cases, rule_cases
from hiennu.study.split_seeds import ensure_seed_splits
from hiennu.training.fold_layout import model_folder

RULE = "rule: ZADC < -2"


def _write(mask: np.ndarray, like: Path, out: Path) -> None:
    _, geometry = read_image(like, dtype=np.uint8)
    write_image(mask.astype(np.uint8), geometry, out)


def run_method(name: str, cases: dict[str, CaseImages], fold_of: dict[str, int], raw_dir: Path, ending: str,
               out: Path, min_component_voxels: int = 0, reuse: dict | None = None,
               candidate_set: str = ALL_CANDIDATES) -> dict:
    """Pooled and nested choice for one method's CV masks; writes both mask sets and scores them.

    min_component_voxels: the plans' size rule the masks were predicted with (as ``select_postprocessing``).
    reuse: a dict kept between calls on the same masks with other folds: the pooled choice and the plain
    masks' scores do not depend on the folds, so they are computed once. candidate_set: what every choice is made
    among (``hiennu.postprocessing.selection.all_candidates``).
    """
    reuse = {} if reuse is None else reuse
    if "pooled" not in reuse:
        options = all_candidates(cases, list(cases), min_component_voxels=min_component_voxels,
                                 candidate_set=candidate_set)
        means = score(cases, options).mean(axis=1)
        best = choose(options, list(means))
        reuse["pooled"] = (options[best].name, float(means[best]), float(means[0]))
    pooled_name, pooled_dice, plain_dice = reuse["pooled"]
    _, choices = nested_estimate(cases, fold_of, min_component_voxels=min_component_voxels,
                                 candidate_set=candidate_set)
    labels = raw_dir / "labelsTr"
    plain_dir, nested_dir = out / name / "plain", out / name / "nested"
    for d in (plain_dir, nested_dir):
        d.mkdir(parents=True, exist_ok=True)
    for case, c in cases.items():
        like = labels / f"{case}{ending}"
        if "plain" not in reuse:
            _write(c.pred, like, plain_dir / f"{case}{ending}")
        _write(c.postprocessed(choices[fold_of[case]]), like, nested_dir / f"{case}{ending}")
    summaries = {}
    for kind, d in (("plain", plain_dir), ("nested", nested_dir)):
        if kind == "plain" and "plain" in reuse:
            summaries[kind] = reuse["plain"]
            continue
        summaries[kind] = evaluate_folders(labels, d, d / "summary.json", images_dir=raw_dir / "imagesTr",
                                           case_ids=sorted(cases))
    reuse["plain"] = summaries["plain"]
    return {"pooled_choice": pooled_name, "pooled_dice": pooled_dice,
            "plain_dice_check": plain_dice, "nested_choices": {str(f): p.name for f, p in sorted(choices.items())},
            "summaries": summaries}


def _row(label: str, s: dict, common: dict | None = None) -> str:
    """One table row; ``common``: the row's :func:`report.method_rows` entry (MASD over the common cases)."""
    m = s["metrics"]

    def ci(k: str, fmt: str) -> str:
        return f"{m[k]['mean']:{fmt}} [{m[k]['ci95_low']:{fmt}}, {m[k]['ci95_high']:{fmt}}]"
    bands = s.get("bands") or {}
    small = bands.get("<1%", {}).get("metrics", {}).get("dice", {}).get("mean", float("nan"))
    masd_common = "" if common is None else f" {common['masd_common_mean']:.2f} |"
    return (f"| {label} | {ci('dice', '.3f')} | {ci('masd', '.2f')} (n={m['masd']['n']}) |{masd_common} "
            f"{ci('nsd', '.3f')} | {m['hd95']['mean']:.1f} | "
            f"{m['lesion_recall']['mean']:.3f} | {m['lesion_precision']['mean']:.3f} | {small:.3f} |")


def split_seed_arg(text: str) -> int | None:
    """``default`` (splits_final.json) or a split seed, a whole number >= 0."""
    if text == "default":
        return None
    try:
        seed = int(text)
        splits_file_name(seed)
    except (ValueError, HiennuError):
        raise argparse.ArgumentTypeError(f"a split seed is a whole number >= 0 (or 'default' for "
                                         f"splits_final.json), got {text!r}") from None
    return seed


def split_label(split_seed: int | None) -> str:
    return "default" if split_seed is None else str(split_seed)


def split_folds(dataset: str, split_seed: int | None, splits_dir: Path | None = None) -> tuple[dict[str, int], Path]:
    """Case -> fold of the split of ``split_seed`` (None: ``splits_final.json``) and the splits file; another
    seed's folds are written to ``splits_seed{S}.json`` when absent (``ensure_seed_splits``), in the
    preprocessed dataset folder or in ``splits_dir``."""
    if splits_dir is not None:
        Path(splits_dir).mkdir(parents=True, exist_ok=True)
    path = ensure_seed_splits(dataset, split_seed, splits_dir)
    if not path.is_file():
        raise SystemExit(f"{path} not found; run hiennu_plan_and_preprocess -d {dataset} first")
    splits = json.loads(path.read_text())
    return {case: k for k, split in enumerate(splits) for case in split["val"]}, path


def results_table(results: dict) -> str:
    """The table of every method's plain and nested rows (MASD with its n and over the cases common to all
    rows), the paired test of the model + post-processing against the rule + post-processing, and notes."""
    labelled = {f"{method}, {what}": r["summaries"][kind] for method, r in results.items()
                for kind, what in (("plain", "no post-processing"), ("nested", "post-processing chosen by nested CV"))}
    rows = {row["method"]: row for row in report.method_rows({k: s["per_case"] for k, s in labelled.items()},
                                                              metrics=("masd",))}
    common_n = next(iter(rows.values()))["masd_common_n"] if rows else 0
    lines = ["| method | Dice [95 % CI] | MASD (mm) [95 % CI] (n) | MASD (mm), "
             f"{common_n} cases common to all rows | NSD [95 % CI] | HD95 (mm) | lesion recall | "
             "lesion precision | Dice < 1 % of brain |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(label, s, rows[label]) for label, s in labelled.items()]
    text = "\n".join(lines) + "\n"
    models = [m for m in results if m != RULE]
    if models:
        per_case = {f"{m} + post-processing": results[m]["summaries"]["nested"]["per_case"] for m in models}
        per_case[f"{RULE} + post-processing"] = results[RULE]["summaries"]["nested"]["per_case"]
        tests = paired_against_rule(per_case, f"{RULE} + post-processing")
        text += "\n" + PAIRED_NOTE + "\n\n" + paired_markdown(tests)
    notes = [f"- {m}: pooled choice {r['pooled_choice']} (pooled Dice {r['pooled_dice']:.4f}, optimistic); "
             f"nested choices per fold {r['nested_choices']}" for m, r in results.items()]
    return text + "\n" + "\n".join(notes) + "\n"


SEED_COLUMNS = (("dice", "Dice", ".3f"), ("masd", "MASD (mm)", ".2f"), ("nsd", "NSD", ".3f"),
                ("hd95", "HD95 (mm)", ".1f"), ("lesion_recall", "lesion recall", ".3f"),
                ("lesion_precision", "lesion precision", ".3f"))
LOWER_IS_BETTER = {"masd", "hd95"}


def mean_and_sd(values: np.ndarray, fmt: str, signed: bool = False) -> str:
    """The mean ± SD (ddof=1) of ``values`` with ``fmt``'s digits (:func:`hiennu.evaluation.report.format_mean_std`);
    a single value (one split) has no SD and says so."""
    digits = int(fmt.strip(".f"))
    if values.size < 2:
        return report.format_mean_std(float(values.mean()), float("nan"), digits, signed) + " (one split: no SD)"
    return report.format_mean_std(float(values.mean()), float(values.std(ddof=1)), digits, signed)


def seeds_table(by_seed: dict[int | None, dict]) -> str:
    """Each split's post-processing chosen by nested CV, per method, and the mean and SD (ddof=1) of each metric
    over the splits (MASD's n per split beside it)."""
    methods = list(next(iter(by_seed.values())))
    header = ["method", "split"] + [label for _, label, _ in SEED_COLUMNS] + ["MASD n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for method in methods:
        values: dict[str, list[float]] = {key: [] for key, _, _ in SEED_COLUMNS}
        for seed, results in by_seed.items():
            m = results[method]["summaries"]["nested"]["metrics"]
            for key, _, _ in SEED_COLUMNS:
                values[key].append(float(m[key]["mean"]))
            lines.append("| " + " | ".join([method, split_label(seed)]
                                           + [f"{m[k]['mean']:{fmt}}" for k, _, fmt in SEED_COLUMNS]
                                           + [str(m["masd"]["n"])]) + " |")
        cells = []
        for key, _, fmt in SEED_COLUMNS:
            v = np.asarray(values[key])
            cells.append(f"{mean_and_sd(v, fmt)} [{v.min():{fmt}}, {v.max():{fmt}}]")
        lines.append("| " + " | ".join([f"**{method}**", f"mean ± SD [min, max] over {len(by_seed)} splits"]
                                       + cells + [""]) + " |")
    text = ("Post-processing chosen by nested CV on each split (each fold's choice made on the other folds only). "
            "Splits: " + ", ".join(split_label(s) for s in by_seed) + " (default: splits_final.json, seed 12345). "
            "MASD is averaged over the cases where it is defined (its n per split).\n\n" + "\n".join(lines) + "\n")
    models = [m for m in methods if m != RULE]
    return text + "".join("\n" + difference_table(by_seed, m) for m in models)


def difference_table(by_seed: dict[int | None, dict], model: str) -> str:
    """``model`` + nested post-processing minus the rule + nested post-processing, split by split (the
    difference of their means over the split's cases), the mean and SD (ddof=1) of each difference over the
    splits, and in how many splits the model is the better (higher Dice, NSD, recall, precision; lower MASD,
    HD95): a margin smaller than its SD over the splits is not one to claim."""
    header = ["split"] + [label for _, label, _ in SEED_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    diffs: dict[str, list[float]] = {key: [] for key, _, _ in SEED_COLUMNS}
    for seed, results in by_seed.items():
        m, r = (results[x]["summaries"]["nested"]["metrics"] for x in (model, RULE))
        cells = []
        for key, _, fmt in SEED_COLUMNS:
            d = float(m[key]["mean"]) - float(r[key]["mean"])
            diffs[key].append(d)
            cells.append(f"{d:+{fmt}}")
        lines.append("| " + " | ".join([split_label(seed)] + cells) + " |")
    summary, better = [], []
    for key, _, fmt in SEED_COLUMNS:
        v = np.asarray(diffs[key])
        summary.append(mean_and_sd(v, fmt, signed=True))
        better.append(str(int(np.sum(v < 0 if key in LOWER_IS_BETTER else v > 0))))
    lines.append("| " + " | ".join([f"**mean ± SD over {len(by_seed)} splits**"] + summary) + " |")
    lines.append("| " + " | ".join([f"splits where the model is better (of {len(by_seed)})"] + better) + " |")
    return (f"{model} + post-processing minus {RULE} + post-processing, both chosen by nested CV on each split "
            f"(MASD: each method's mean over its own defined cases, n above):\n\n" + "\n".join(lines) + "\n")


def run_split(folder: str, raw_dir: Path, ending: str, model: str | None, split_seed: int | None, out: Path,
              rule_cache: dict, splits_dir: Path | None = None, candidate_set: str = ALL_CANDIDATES) -> dict:
    """Score the rule (and ``model``'s CV masks) with post-processing chosen by nested CV on the folds of
    ``split_seed``; writes ``out/table.md``. ``rule_cache`` keeps the rule's cases, pooled choice and plain
    scores between splits (they do not depend on the folds)."""
    rule_folds, splits_path = split_folds(folder, split_seed, splits_dir)
    results = {}
    if model:
        model_dir = model_folder(folder, model, split_seed)
        masks, fold_of = validation_cases(model_dir, sorted(set(rule_folds.values())), raw_dir / "labelsTr", ending)
        if rule_folds != fold_of:
            raise SystemExit(f"{model_dir}: the model's folds differ from {splits_path}; cannot compare on the same "
                             f"folds")
        probabilities = ({c: [ModelFolder(model_dir).validation_probabilities(fold_of[c], c)] for c in masks}
                         if needs_probabilities(candidate_set) else None)
        cases = load_cases(masks, raw_dir, None, probabilities)
        results[model] = run_method("model", cases, fold_of, raw_dir, ending, out, plans_size_rule(model_dir),
                                    candidate_set=candidate_set)
    if "cases" not in rule_cache:  # the rule's masks in place of the model's (hiennu.postprocessing.rule_reference)
        rule_cache["cases"] = rule_cases(cases) if model else load_rule_cases(raw_dir, sorted(rule_folds))
    if set(rule_cache["cases"]) != set(rule_folds):
        raise SystemExit(f"{splits_path}: its cases differ from the other splits'; cannot compare the splits")
    results[RULE] = run_method("rule", rule_cache["cases"], rule_folds, raw_dir, ending, out,
                               reuse=rule_cache.setdefault("reuse", {}), candidate_set=rule_candidate_set(candidate_set))
    text = (f"Folds: {splits_path.name} (split {split_label(split_seed)}). Post-processing candidates: "
            f"{candidate_set}.\n\n" + results_table(results))
    (out / "table.md").write_text(text)
    print(text)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("-m", "--model", help="model folder name TRAINER__PLANS__CONFIG (every fold of the split); without it, "
                    "only the rule is scored, on the folds of splits_final.json (or of --split-seed)")
    ap.add_argument("-o", "--out", required=True, type=Path)
    seeds = ap.add_mutually_exclusive_group()
    seeds.add_argument("--split-seed", type=split_seed_arg, default=None, metavar="S",
                       help="the folds of split seed S (splits_seed{S}.json beside splits_final.json, written from "
                            "the fingerprint when absent; splits_final.json is never rewritten); with -m the "
                            "model's folds of that seed, under $hiennu_results/DatasetNNN_Name/split_seed_S/")
    seeds.add_argument("--split-seeds", type=split_seed_arg, nargs="+", metavar="S",
                       help="several splits in one call ('default' = splits_final.json), each into OUT/split_<S>/, "
                            "and OUT/split_seeds.md: each metric per split and its mean and SD over the splits")
    ap.add_argument("--splits-dir", type=Path, default=None, metavar="DIR",
                    help="read and write the other seeds' splits_seed{S}.json in DIR instead of the preprocessed "
                         "dataset folder (which then stays unwritten); the default split is always the "
                         "preprocessed folder's splits_final.json")
    ap.add_argument("--candidates", choices=CANDIDATE_SETS, default=ALL_CANDIDATES,
                    help="what each post-processing choice is made among (hiennu_determine_postprocessing "
                         "--candidates): all, cap-filter (the ADC cap at the 99.5th percentile + the lesion filter, "
                         "against none) or judged-rule (the rule's components judged by the model's probabilities; "
                         "needs -m and the folds' CASE.npz; the rule gets cap-filter)")
    args = ap.parse_args()
    if needs_probabilities(args.candidates) and not args.model:
        ap.error(f"--candidates {args.candidates} asks a model's probabilities: name the model with -m")
    if args.split_seeds and len(set(args.split_seeds)) != len(args.split_seeds):
        ap.error("--split-seeds: a split is named twice")
    folder = resolve_dataset(args.dataset)
    raw_dir = raw_root() / folder
    ending = load_dataset_json(raw_dir).file_ending
    rule_cache: dict = {}
    if not args.split_seeds:
        args.out.mkdir(parents=True, exist_ok=True)
        run_split(folder, raw_dir, ending, args.model, args.split_seed, args.out, rule_cache, args.splits_dir,
                  args.candidates)
        return
    by_seed = {}
    for seed in args.split_seeds:
        out = args.out / f"split_{split_label(seed)}"
        out.mkdir(parents=True, exist_ok=True)
        by_seed[seed] = run_split(folder, raw_dir, ending, args.model, seed, out, rule_cache, args.splits_dir,
                                  args.candidates)
    text = seeds_table(by_seed)
    (args.out / "split_seeds.md").write_text(text)
    print(text)

if __name__ == "__main__":
    main()
