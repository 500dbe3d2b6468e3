"""Honest cross-validated scores of post-processing chosen by CV, for a trained model and for the ZADC rule.

nnU-Net chooses post-processing on the pooled cross-validation predictions and reports the pooled
score of the winner, which is optimistic (the best of ~30 candidates on the same cases, lesion filters
fitted on them). This script also scores the *nested* choice with every challenge metric: for each fold,
the ADC caps are derived, the lesion filters fitted and the candidate chosen on the other folds' cases
only, then applied to the held-out fold; the
resulting masks are written and scored with ``evaluate_folders`` (Dice, MASD, NSD with bootstrap
intervals, HD95, lesion recall/precision, Dice by lesion-size band).

The same is done for the plain rule ZADC < -2 inside the brain (every case predicted by the rule,
folds from ``splits_final.json``), so that the gain of the post-processing is not mistaken for a gain
of the network.

Usage (the BONBID dev set as converted and preprocessed in results.md)::

    python benchmarks/postprocessing_cv.py -d BONBID -m TrainerDiceFocal__Veto__3d_fullres -o /tmp/ppcv
    python benchmarks/postprocessing_cv.py -d BONBID -o /tmp/ppcv_rule      # the rule alone, no model

It does not change the model folder (no ``postprocessing.json`` is written; ``hiennu_loss_study``
writes that). Output: ``OUT/<method>/{plain,nested}/`` masks with ``summary.json``, and ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.masks import rule_mask
from hiennu.postprocessing.record import apply_postprocessing
from hiennu.postprocessing.selection import (CaseImages, all_candidates, choose, load_cases, nested_estimate, score,
                                             validation_cases)
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.image import read_image, write_image
from hiennu.paths import preprocessed_root, raw_root, resolve_dataset, results_root


def _write(mask: np.ndarray, like: Path, out: Path) -> None:
    _, geometry = read_image(like, dtype=np.uint8)
    write_image(mask.astype(np.uint8), geometry, out)


def run_method(name: str, cases: dict[str, CaseImages], fold_of: dict[str, int], raw_dir: Path, ending: str,
               out: Path) -> dict:
    """Pooled and nested choice for one method's CV masks; writes both mask sets and scores them."""
    options = all_candidates(cases, list(cases))
    means = score(cases, options).mean(axis=1)
    pooled = options[choose(options, list(means))]
    _, choices = nested_estimate(cases, fold_of)
    labels = raw_dir / "labelsTr"
    plain_dir, nested_dir = out / name / "plain", out / name / "nested"
    for d in (plain_dir, nested_dir):
        d.mkdir(parents=True, exist_ok=True)
    for case, c in cases.items():
        like = labels / f"{case}{ending}"
        _write(c.pred, like, plain_dir / f"{case}{ending}")
        _write(c.postprocessed(choices[fold_of[case]]), like, nested_dir / f"{case}{ending}")
    summaries = {}
    for kind, d in (("plain", plain_dir), ("nested", nested_dir)):
        summaries[kind] = evaluate_folders(labels, d, d / "summary.json", images_dir=raw_dir / "imagesTr",
                                           case_ids=sorted(cases))
    return {"pooled_choice": pooled.name, "pooled_dice": float(means[options.index(pooled)]),
            "plain_dice_check": float(means[0]), "nested_choices": {str(f): p.name for f, p in sorted(choices.items())},
            "summaries": summaries}


def _row(label: str, s: dict) -> str:
    m = s["metrics"]

    def ci(k: str, fmt: str) -> str:
        return f"{m[k]['mean']:{fmt}} [{m[k]['ci95_low']:{fmt}}, {m[k]['ci95_high']:{fmt}}]"
    bands = s.get("bands") or {}
    small = bands.get("<1%", {}).get("metrics", {}).get("dice", {}).get("mean", float("nan"))
    return (f"| {label} | {ci('dice', '.3f')} | {ci('masd', '.2f')} | {ci('nsd', '.3f')} | {m['hd95']['mean']:.1f} | "
            f"{m['lesion_recall']['mean']:.3f} | {m['lesion_precision']['mean']:.3f} | {small:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("-m", "--model", help="model folder name TRAINER__PLANS__CONFIG (all 5 folds); without it, "
                    "only the rule is scored, on the folds of splits_final.json")
    ap.add_argument("-o", "--out", required=True, type=Path)
    args = ap.parse_args()
    folder = resolve_dataset(args.dataset)
    raw_dir, pre_dir = raw_root() / folder, preprocessed_root() / folder
    ending = load_dataset_json(raw_dir).file_ending
    splits = json.loads((pre_dir / "splits_final.json").read_text())
    rule_folds = {case: k for k, split in enumerate(splits) for case in split["val"]}
    results = {}
    if args.model:
        masks, fold_of = validation_cases(results_root() / folder / args.model, range(5), raw_dir / "labelsTr", ending)
        if rule_folds != fold_of:
            raise SystemExit("the model's folds differ from splits_final.json; cannot compare on the same folds")
        cases = load_cases(masks, raw_dir)
        results[args.model] = run_method("model", cases, fold_of, raw_dir, ending, args.out)
    else:  # the labels stand in for the predictions that the rule replaces below
        cases = load_cases({case: raw_dir / "labelsTr" / f"{case}{ending}" for case in rule_folds}, raw_dir)

    rule_cases = {case: CaseImages(rule_mask(c.zadc, c.adc).astype(np.uint8), c.ref, c.zadc, c.adc, c.spacing_zyx)
                  for case, c in cases.items()}
    results["rule: ZADC < -2"] = run_method("rule", rule_cases, rule_folds, raw_dir, ending, args.out)

    lines = ["| method | Dice [95 % CI] | MASD (mm) [95 % CI] | NSD [95 % CI] | HD95 (mm) | lesion recall | "
             "lesion precision | Dice < 1 % of brain |", "|---|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        lines.append(_row(f"{method}, no post-processing", r["summaries"]["plain"]))
        lines.append(_row(f"{method}, post-processing chosen by nested CV", r["summaries"]["nested"]))
    notes = [f"- {m}: pooled choice {r['pooled_choice']} (pooled Dice {r['pooled_dice']:.4f}, optimistic); "
             f"nested choices per fold {r['nested_choices']}" for m, r in results.items()]
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    (args.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
