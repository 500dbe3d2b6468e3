"""The table ``hiennu_find_best_configuration`` prints: every candidate and the rule, raw and with their own
post-processing, the choice and why, the paired test against the rule, the fully nested estimate of the choice
(``--nested-choice``), and the command that predicts.

Raw and post-processed columns sit side by side because on BONBID they can order the candidates differently
(:mod:`hiennu.ensembling.choice`); the pooled Dice with post-processing stands beside the nested one so that
an unstable choice (a large gap) shows.
"""

from __future__ import annotations

import math

from hiennu.ensembling.candidate_postprocessing import KEPT
from hiennu.ensembling.choice import POSTPROCESSED, RAW
from hiennu.ensembling.cv_scores import TABLE_METRICS
from hiennu.ensembling.inference_information import POSTPROCESSING_NOTE, CandidateScores, InferenceInformation
from hiennu.ensembling.ensemble_cv import RULE
from hiennu.ensembling.nested_choice import METHOD
from hiennu.ensembling.rule_comparison import NESTED
from hiennu.evaluation.paired_comparison import PAIRED_NOTE, paired_markdown

HEADER = ["candidate", "kind", "Dice [95% CI]", "MASD mm (n)", "NSD", "post-processing (pooled choice)",
          "+pp nested Dice [95% CI]", "+pp nested MASD mm (n)", "+pp nested NSD", "+pp pooled Dice"]


def summary_number(summary: dict | None, key: str, digits: int) -> str:
    """``summary[key]`` with ``digits`` decimals, ``n/a`` when absent, None (JSON) or NaN."""
    value = None if summary is None else summary.get(key)
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _cells(metrics: dict[str, dict] | None) -> list[str]:
    """Dice [95 % CI], MASD (n), NSD of a metric -> summary mapping (blank without one)."""
    if metrics is None:
        return ["", "", ""]
    dice, masd, nsd = (metrics[m] for m in TABLE_METRICS)
    low, high = summary_number(dice, "ci95_low", 4), summary_number(dice, "ci95_high", 4)
    return [f"{summary_number(dice, 'mean', 4)} [{low}, {high}]",
            f"{summary_number(masd, 'mean', 2)} ({masd.get('n', 0)})", summary_number(nsd, "mean", 4)]


def _row(candidate: CandidateScores, name: str) -> str:
    post = candidate.postprocessing
    if post is None:
        pp = ["(none chosen)", "", "", "", ""]
    else:
        pooled = summary_number((post.get("pooled") or {}).get("dice"), "mean", 4)
        pp = [post["chosen_name"], *_cells(post.get("nested")), pooled]
    return "| " + " | ".join([name, candidate.kind, *_cells(candidate.metrics), *pp]) + " |"


def _choice_lines(info: InferenceInformation) -> list[str]:
    s = info.selection
    lines = [f"chosen: {info.chosen.name} ({info.chosen.kind}) by {s.rule}; {s.note}"]
    other = {POSTPROCESSED: (s.by_raw, "by raw Dice (nnU-Net's rule, --select-by raw)"),
             RAW: (s.by_postprocessed, "by nested Dice with post-processing (the default, --select-by postprocessed)")}
    name, how = other[s.criterion]
    if name is not None and name != info.chosen.name:
        lines.append(f"{how} the choice would be {name}")
    post = info.chosen.postprocessing
    lines.append(f"post-processing: {post['chosen_name']} ({post['record']}: {post['action']})")
    for c in info.candidates:
        p = c.postprocessing
        if p is not None and p["action"] == KEPT:
            other = (f"this run would choose {p['this_run_choice']}" if p["this_run_choice"] != p["chosen_name"]
                     else "this run chooses the same by name, with other parameters (fitted on other masks?)")
            lines.append(f"kept {p['record']} ({p['chosen_name']}); {other}: delete the file and run again to "
                         f"replace it")
    return lines


def _paired_lines(info: InferenceInformation) -> list[str]:
    test = info.paired_test
    if test is None:
        return ["paired test against the rule: not available (no nested post-processing on one side)"]
    method = test.method.removesuffix(NESTED)
    return [f"Paired test over the same {test.num_cases} cases, both with their nested post-processing "
            f"(difference: {method} minus the rule"
            + (", the best model or ensemble, since the rule was chosen" if info.chosen.kind == RULE else "") + "):", "", paired_markdown(test.rows).rstrip("\n"), "",
            PAIRED_NOTE]


def _nested_choice_lines(info: InferenceInformation) -> list[str]:
    """The fully nested estimate beside the chosen one's nested row and the rule's, which outer fold chose what,
    and its paired test against the rule (nothing without ``--nested-choice``)."""
    nested = info.nested_choice
    if nested is None:
        return []
    by = "nested Dice with post-processing" if nested.criterion == POSTPROCESSED else "raw Dice"
    head = ["estimate", "Dice [95% CI]", "MASD mm (n)", "NSD"]
    lines = [f"Fully nested estimate of this choice (--nested-choice): for each outer fold, every candidate's "
             f"post-processing and the candidate (by {by}, among {nested.num_candidates}) chosen on the other folds "
             f"only, then applied to the fold; the {len(nested.per_case)} cases of the outer folds pooled. No choice "
             f"is made on the cases it is scored on; the chosen one's nested row (the best of {nested.num_candidates} "
             f"on the same cases) stands beside it.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
             "| " + " | ".join([f"**{METHOD}**", *_cells(nested.metrics)]) + " |",
             "| " + " | ".join([f"{info.chosen.name}{NESTED}, chosen on all cases",
                                *_cells((info.chosen.postprocessing or {}).get("nested"))]) + " |"]
    if info.reference is not None and info.reference.postprocessing is not None:
        lines.append("| " + " | ".join([f"{info.reference.name}{NESTED}",
                                        *_cells(info.reference.postprocessing.get("nested"))]) + " |")
    if nested.raw_metrics is not None:
        dice = nested.raw_metrics["dice"]
        lines.append("| " + " | ".join(["the same choices without post-processing (Dice only)",
                                        f"{summary_number(dice, 'mean', 4)} [{summary_number(dice, 'ci95_low', 4)}, "
                                        f"{summary_number(dice, 'ci95_high', 4)}]", "", ""]) + " |")
    key = "nested_dice" if nested.criterion == POSTPROCESSED else "raw_dice"
    head = ["outer fold", "cases", "chosen on the other folds", "its raw Dice there", "its +pp nested Dice there",
            f"next by {by} there", "its post-processing (chosen on the other folds)", "raw Dice on the fold",
            "Dice on the fold"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for f in nested.per_fold:
        runner_up = f.get("runner_up")
        next_best = ("(none)" if runner_up is None else
                     f"{runner_up} ({summary_number((f.get('scores') or {}).get(runner_up), key, 4)})")
        lines.append("| " + " | ".join([str(f["fold"]), str(f["num_cases"]), f["chosen"],
                                        summary_number(f, "raw_dice", 4), summary_number(f, "nested_dice", 4),
                                        next_best,
                                        f["postprocessing"], summary_number(f, "raw_dice_on_fold", 4),
                                        summary_number(f, "dice", 4)]) + " |")
    test = nested.paired_test
    if test is None:
        return lines + ["", "paired test against the rule: not available (the rule was not scored)"]
    return lines + ["", f"Paired test over the same {test.num_cases} cases (difference: the fully nested choice minus "
                        f"the rule + its nested post-processing):", "", paired_markdown(test.rows).rstrip("\n")]


def table(info: InferenceInformation) -> str:
    """Markdown: every candidate and the reference rule (raw: Dice with its 95 % interval, MASD with its number
    of defined cases, NSD; with its own post-processing: nested Dice / MASD (n) / NSD and the pooled Dice), the
    choice, the paired test against the rule, the fully nested estimate when there is one, and the predict
    command."""
    lines = [f"Configurations of {info.dataset} on {len(info.case_ids)} cross-validation cases (folds "
             f"{', '.join(map(str, info.folds))}); raw: without post-processing; +pp: {POSTPROCESSING_NOTE}.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for c in info.candidates:
        lines.append(_row(c, f"**{c.name}** (chosen)" if c.name == info.chosen.name else c.name))
    if info.reference is not None:
        role = ("**(chosen)**" if info.chosen.kind == RULE else
                "(a candidate, --rule-candidate)" if info.reference.path is not None else "(reference, never chosen)")
        lines.append(_row(info.reference, f"{info.reference.name} {role}"))
    lines += ["", *_choice_lines(info), "", *_paired_lines(info)]
    nested = _nested_choice_lines(info)
    lines += (["", *nested] if nested else []) + ["", "predict with:", f"  {info.predict_command}"]
    return "\n".join(lines) + "\n"
