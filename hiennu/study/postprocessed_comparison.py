"""Model + post-processing against the rule + post-processing, over the same cases, paired (issue 24).

Post-processing chosen by cross-validation lifts the plain rule ``ZADC < -2`` inside the brain as much
as it lifts a network, so "above the rule" compares the two after the same treatment: each with the
post-processing chosen by *nested* cross-validation (:func:`nested_estimate`: each fold's choice made on
the other folds' cases only, ADC caps and lesion filters included, then applied to the fold). The masks
are written, scored with :func:`hiennu.evaluation.evaluate.evaluate_folders`, and each model is tested
against the rule by the paired two-sided Wilcoxon signed-rank test on Dice, MASD and NSD, Holm-corrected
across the three (:mod:`hiennu.evaluation.paired_comparison`, shared with ``hiennu_find_best_configuration``;
the rule's masks come from :mod:`hiennu.postprocessing.rule_reference`). Pairs are the cases both
scored with a defined value: every case for Dice and NSD; for MASD only the cases where both have it
defined (it is undefined when exactly one of mask and reference is empty), so its n can be smaller.

Used by the loss study's report (``postprocessed_vs_rule.md``) and ``benchmarks/postprocessing_cv.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hiennu.evaluation import paired_comparison, report
from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.evaluation.paired_comparison import PAIRED_METRICS, PAIRED_NOTE, paired_markdown
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.image import read_image, write_image
from hiennu.log import get_logger
from hiennu.postprocessing.record import PostProcessing
from hiennu.postprocessing.rule_reference import rule_cases
from hiennu.postprocessing.selection import CaseImages, load_cases, nested_estimate, plans_size_rule, validation_cases

log = get_logger(__name__)

RULE_METHOD = "rule: ZADC < -2 + post-processing"
__all__ = ["PAIRED_METRICS", "PAIRED_NOTE", "RULE_METHOD", "compare_models_with_rule", "comparison_markdown",
           "paired_against_rule", "paired_markdown", "rule_cases", "score_nested", "write_masks"]


def write_masks(masks: Mapping[str, np.ndarray], raw_dir: Path, ending: str, out_dir: Path) -> Path:
    """Write each case's mask in its label's geometry to ``out_dir/CASE<ending>``; returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for case, mask in masks.items():
        _, geometry = read_image(raw_dir / "labelsTr" / f"{case}{ending}", dtype=np.uint8)
        write_image(np.asarray(mask).astype(np.uint8), geometry, out_dir / f"{case}{ending}")
    return out_dir


def score_nested(cases: Mapping[str, CaseImages], fold_of: Mapping[str, int], raw_dir: Path, out_dir: Path,
                 min_component_voxels: int = 0, choices: Mapping[int, PostProcessing] | None = None,
                 num_processes: int = 2) -> tuple[dict, dict[int, PostProcessing]]:
    """Apply each fold's nested choice to its cases, write the masks to ``out_dir`` and score them there
    (``out_dir/summary.json``); returns the summary and the choices. ``choices`` given (fold -> choice, e.g.
    from a ``postprocessing.json`` record) are used as they are instead of choosing again."""
    raw_dir = Path(raw_dir)
    if choices is None:
        _, choices = nested_estimate(dict(cases), dict(fold_of), min_component_voxels=min_component_voxels)
    ending = load_dataset_json(raw_dir).file_ending
    write_masks({case: c.postprocessed(choices[fold_of[case]]) for case, c in cases.items()}, raw_dir, ending,
                Path(out_dir))
    summary = evaluate_folders(raw_dir / "labelsTr", out_dir, Path(out_dir) / "summary.json",
                               images_dir=raw_dir / "imagesTr", num_processes=num_processes, case_ids=sorted(cases))
    return summary, dict(choices)


def paired_against_rule(per_case: Mapping[str, Sequence[dict]], rule: str = RULE_METHOD,
                        metrics: Sequence[str] = PAIRED_METRICS) -> list[dict]:
    """:func:`hiennu.evaluation.paired_comparison.paired_against_rule`, against :data:`RULE_METHOD` by default."""
    return paired_comparison.paired_against_rule(per_case, rule, metrics)


def comparison_markdown(per_case: Mapping[str, Sequence[dict]], rule: str = RULE_METHOD) -> tuple[str, list[dict]]:
    """The table of every method (Dice, MASD with its n and over the common cases, NSD) and the paired tests
    against ``rule``; returns the Markdown and the test rows."""
    rows = report.method_rows(per_case, metrics=PAIRED_METRICS)
    tests = paired_against_rule(per_case, rule)
    text = (report.markdown_table(rows, metrics=PAIRED_METRICS) + "\n" + PAIRED_NOTE + "\n\n"
            + paired_markdown(tests))
    return text, tests


def compare_models_with_rule(model_dirs: Mapping[str, Path], records: Mapping[str, dict], raw_dir: Path,
                             folds: Sequence[int], out: Path, num_processes: int = 2) -> dict:
    """Each model's validation masks with the post-processing its ``records[name]`` (a ``postprocessing.json``
    record) chose per fold by nested CV, and the rule with its own nested choice, over the same cases;
    masks under ``out/<i>_<method>/``. Returns ``{"per_case": {method: rows}, "tests": rows, "markdown": str}``.
    """
    raw_dir, out = Path(raw_dir), Path(out)
    ending = load_dataset_json(raw_dir).file_ending
    per_case: dict[str, list[dict]] = {}
    base_cases: dict[str, CaseImages] | None = None
    base_folds: dict[str, int] | None = None
    for i, (name, model_dir) in enumerate(model_dirs.items()):
        masks, fold_of = validation_cases(Path(model_dir), folds, raw_dir / "labelsTr", ending)
        if base_folds is not None and fold_of != base_folds:
            raise ValueError(f"{name}: its validation cases differ from {next(iter(model_dirs))}'s; the paired "
                             f"comparison needs the same cases in the same folds")
        cases = load_cases(masks, raw_dir)
        chosen = (records.get(name) or {}).get("nested", {}).get("chosen_per_fold")
        choices = None if chosen is None else {int(f): PostProcessing.from_dict(d, f"{name} nested choice, fold {f}")
                                               for f, d in chosen.items()}
        summary, _ = score_nested(cases, fold_of, raw_dir, out / f"{i}_model", plans_size_rule(Path(model_dir)),
                                  choices, num_processes)
        per_case[f"{name} + post-processing"] = summary["per_case"]
        if base_cases is None:
            base_cases, base_folds = cases, fold_of
    if base_cases is None or base_folds is None:
        raise ValueError("compare_models_with_rule needs at least one model")
    summary, choices = score_nested(rule_cases(base_cases), base_folds, raw_dir, out / "rule",
                                    num_processes=num_processes)
    per_case[RULE_METHOD] = summary["per_case"]
    log.info("rule + nested post-processing: Dice %.4f (choices %s)", summary["metrics"]["dice"]["mean"],
             {f: p.name for f, p in sorted(choices.items())})
    text, tests = comparison_markdown(per_case)
    return {"per_case": per_case, "tests": tests, "markdown": text,
            "rule_choices": {str(f): p.name for f, p in sorted(choices.items())}}
