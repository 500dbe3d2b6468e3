"""The fully nested estimate of hiennu_find_best_configuration's choice (--nested-choice,
hiennu.ensembling.nested_choice).

By hand first: two candidates on four folds whose per-case scores make the choice differ between outer folds, so the
pooled outer cases are not the chosen one's nested rows. Then the inner scores (never reading the held-out fold),
the fold-subset generalisation of the post-processing selection, and the whole command on the tiny fixture of
test_find_best_configuration: a model that is exact on folds 0 and 1 but leaves a large false positive on fold 2
(which post-processing chosen without fold 2 cannot remove) is chosen when fold 2 is held out, and scores 0 there.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

from hiennu.cli import find_best_configuration as cli
from hiennu.ensembling.best_configuration import FindBestOptions
from hiennu.ensembling.inference_information import candidate_scores, load_inference_information
from hiennu.ensembling.nested_choice import (METHOD, ChoiceInputs, NestedChoice, WithoutFold, check_folds,
                                             choice_inputs, nested_choice)
from hiennu.errors import HiennuError
from hiennu.io.atomic import write_json
from hiennu.paths import INFERENCE_INFORMATION_FILE, EnsembleFolder, ModelFolder
from hiennu.postprocessing.selection import CaseImages, nested_choices, nested_estimate

from test_find_best_configuration import (A, B, GEO, LESION, _replace_model, _run, _splits, _written,
                                          cv)  # noqa: F401  (cv: the fixture)
from test_postprocessing_package import _case, _cases

# ------------------------------------------------------------------------------------------ by hand

FOLDS = (0, 1, 2, 3)
CASES = {f"c{k}": k for k in FOLDS}  # one case per fold
# the Dice each candidate's nested post-processing reaches within the folds it is chosen on (the same whichever
# fold is held out, for a hand count), its raw Dice, and its held-out rows (the post-processing chosen without
# the case's fold, applied to it): deliberately other numbers, so that the test sees which one is used
WITHIN = {"m__p__a": [1.0, 0.0, 0.6, 0.6], "m__p__b": [0.2, 0.9, 0.6, 0.6]}
RAW = {"m__p__a": [0.5, 0.5, 0.5, 0.5], "m__p__b": [0.4, 0.4, 0.4, 0.9]}
HELD_OUT = {"m__p__a": [0.95, 0.05, 0.55, 0.65], "m__p__b": [0.25, 0.85, 0.5, 0.7]}
MASD = {"m__p__a": [1.0, math.nan, 2.0, 3.0], "m__p__b": [4.0, 5.0, 6.0, 7.0]}  # a's fold-1 mask is empty
RULE_DICE = [0.2, 0.1, 0.5, 0.6]


def _inputs(name: str) -> ChoiceInputs:
    without = {k: WithoutFold({c: RAW[name][f] for c, f in CASES.items() if f != k},
                              {c: WITHIN[name][f] for c, f in CASES.items() if f != k}) for k in FOLDS}
    rows = [{"case_id": c, "fold": f, "dice": HELD_OUT[name][f], "masd": MASD[name][f], "nsd": HELD_OUT[name][f]}
            for c, f in CASES.items()]
    return ChoiceInputs(without, rows, {k: f"{name} pp without {k}" for k in FOLDS})


def _scored(name: str):
    """The candidate as the whole run scored it (its numbers there must not matter to the nested choice)."""
    return candidate_scores(name, "model", [name], name, {"dice": {"mean": 0.99}},
                            {"nested": {"dice": {"mean": 0.99}}})


def test_the_fully_nested_choice_by_hand():
    """Without fold 0: a (0.0 + 0.6 + 0.6) / 3 = 0.4 against b (0.9 + 0.6 + 0.6) / 3 = 0.7, so b; without 1: a
    0.733 against b 0.467, so a; without 2 or 3: a 0.533 against b 0.567, so b. On all cases b wins (0.575
    against 0.55), but pooled over the outer folds the choice scores b's 0.25, a's 0.05, b's 0.5 and 0.7."""
    rule_rows = [{"case_id": c, "fold": f, "dice": RULE_DICE[f], "masd": 1.0, "nsd": RULE_DICE[f]}
                 for c, f in CASES.items()]
    result = nested_choice([_scored("m__p__a"), _scored("m__p__b")], {n: _inputs(n) for n in WITHIN},
                           "postprocessed", "rule", rule_rows)
    assert result.choices == {0: "m__p__b", 1: "m__p__a", 2: "m__p__b", 3: "m__p__b"}
    by_fold = {f["fold"]: f for f in result.per_fold}
    assert by_fold[0]["nested_dice"] == pytest.approx(0.7) and by_fold[1]["nested_dice"] == pytest.approx(2.2 / 3)
    assert by_fold[0]["raw_dice"] == pytest.approx(1.7 / 3)                      # b's raw Dice on folds 1-3
    assert by_fold[1]["postprocessing"] == "m__p__a pp without 1" and by_fold[2]["num_cases"] == 1
    assert by_fold[0]["runner_up"] == "m__p__a" and by_fold[0]["scores"]["m__p__a"]["nested_dice"] == pytest.approx(0.4)
    assert by_fold[1]["runner_up"] == "m__p__b" and by_fold[3]["scores"]["m__p__a"]["raw_dice"] == 0.5
    assert [r["dice"] for r in result.per_case] == [0.25, 0.05, 0.5, 0.7]
    assert [r["candidate"] for r in result.per_case] == ["m__p__b", "m__p__a", "m__p__b", "m__p__b"]
    assert result.metrics["dice"]["mean"] == pytest.approx(1.5 / 4)
    assert result.metrics["masd"]["mean"] == pytest.approx((4.0 + 6.0 + 7.0) / 3) and result.metrics["masd"]["n"] == 3
    assert result.metrics["nsd"]["mean"] == pytest.approx(1.5 / 4)
    assert result.metrics["dice"]["ci95_low"] <= 1.5 / 4 <= result.metrics["dice"]["ci95_high"]
    test = {r["metric"]: r for r in result.paired_test.rows}
    assert result.paired_test.method == METHOD and result.paired_test.reference == "rule + post-processing (nested)"
    assert test["dice"]["n_pairs"] == 4
    assert test["dice"]["mean_difference"] == pytest.approx((0.05 - 0.05 + 0 + 0.1) / 4)
    assert test["masd"]["n_pairs"] == 3                                          # a's undefined MASD is not paired
    # the same choices without post-processing: b's raw Dice on the cases of folds 0, 2, 3 and a's on fold 1's
    assert [r["raw_dice"] for r in result.per_case] == [0.4, 0.5, 0.4, 0.9]
    assert result.raw_metrics["dice"]["mean"] == pytest.approx(2.2 / 4)
    assert [by_fold[k]["raw_dice_on_fold"] for k in FOLDS] == [0.4, 0.5, 0.4, 0.9]
    assert NestedChoice.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    older = {k: v for k, v in result.to_dict().items() if k != "raw_metrics"}  # a file written before it was kept
    assert NestedChoice.from_dict(older).raw_metrics is None


def test_the_fully_nested_choice_honours_select_by_raw():
    """By raw Dice: without fold 3 a's 0.5 beats b's 0.4, otherwise b's (0.4 + 0.4 + 0.9) / 3 = 0.567 wins."""
    inputs = {n: _inputs(n) for n in WITHIN}
    inputs = {n: ChoiceInputs({k: WithoutFold(w.raw_dice, None) for k, w in i.without_fold.items()},
                              i.held_out_rows, i.held_out_postprocessing) for n, i in inputs.items()}
    result = nested_choice([_scored("m__p__a"), _scored("m__p__b")], inputs, "raw")
    assert result.choices == {0: "m__p__b", 1: "m__p__b", 2: "m__p__b", 3: "m__p__a"}
    assert result.metrics["dice"]["mean"] == pytest.approx((0.25 + 0.85 + 0.5 + 0.65) / 4)
    assert result.paired_test is None and all(f["nested_dice"] is None for f in result.per_fold)
    # what the choice by raw Dice is for: the chosen ones' raw Dice on the folds they never saw, b, b, b then a
    assert result.raw_metrics["dice"]["mean"] == pytest.approx((0.4 + 0.4 + 0.4 + 0.5) / 4)
    # a tie on the criterion goes as the command's does: fewer members, then the name
    tie = {n: ChoiceInputs({k: WithoutFold({c: 0.5 for c in w.raw_dice}, None) for k, w in i.without_fold.items()},
                           i.held_out_rows, i.held_out_postprocessing) for n, i in inputs.items()}
    assert set(nested_choice([_scored("m__p__b"), _scored("m__p__a")], tie, "raw").choices.values()) == {"m__p__a"}


def test_fewer_than_three_folds_is_a_one_line_error_naming_them():
    with pytest.raises(HiennuError, match=r"^--nested-choice needs at least 3 folds .*got fold\(s\) 0, 1; name three "
                                          r"or more with -f \(e\.g\. -f 0 1 2 3 4\), or leave out --nested-choice$"):
        check_folds([1, 0])
    with pytest.raises(HiennuError, match="got fold.s. 2;"):
        FindBestOptions("Tiny", ["3d_fullres"], folds=[2], nested_choice=True)
    FindBestOptions("Tiny", ["3d_fullres"], folds=[0, 1])                        # without it, two folds are fine


# ------------------------------------------------------------------------------------------ the inner scores

def test_the_inner_scores_never_read_the_held_out_fold():
    """Without fold 0, a candidate's inner nested Dice is exactly the nested estimate of a run given the other folds
    only, and stays the same when every array of fold 0's cases is replaced; the raw Dice are those of the masks."""
    cases, fold_of = _cases(n=9, folds=3)
    first = choice_inputs(cases, fold_of, 0, "postprocessed", [], {})
    rest = {c: cases[c] for c in cases if fold_of[c] != 0}
    alone, _ = nested_estimate(rest, {c: fold_of[c] for c in rest})
    assert first.without_fold[0].nested_dice == alone
    assert set(first.without_fold[2].nested_dice) == {c for c in cases if fold_of[c] != 2}
    rng = np.random.default_rng(5)
    changed = dict(cases)
    for c in [c for c in cases if fold_of[c] == 0]:
        pred, ref, adc, zadc = _case(rng, 1, cases[c].pred.shape)
        changed[c] = CaseImages(np.roll(pred, 3, axis=1), ref != 0, zadc - 1.0, adc * 1.5, (4.0, 0.8, 0.8))
    second = choice_inputs(changed, fold_of, 0, "postprocessed", [], {})
    assert second.without_fold[0] == first.without_fold[0]
    assert all(second.without_fold[k] != first.without_fold[k] for k in (1, 2))
    raw = choice_inputs(cases, fold_of, 0, "raw", [], {})                        # raw: no inner post-processing
    assert raw.without_fold[1].nested_dice is None
    assert raw.without_fold[1].raw_dice == first.without_fold[1].raw_dice
    for case in [c for c in cases if fold_of[c] != 1]:
        ref, pred = cases[case].ref, cases[case].pred != 0
        assert raw.without_fold[1].raw_dice[case] == pytest.approx(2 * (ref & pred).sum() / (ref.sum() + pred.sum()))


def test_nested_choices_within_a_subset_of_folds_and_made_once():
    """``within`` is the run given those folds alone; ``made`` makes each choice once (fold 1 without 2 and fold 2
    without 1 are chosen on the same folds), with the same result as without it."""
    cases, fold_of = _cases(n=9, folds=3)
    made: dict = {}
    without_0 = nested_choices(cases, fold_of, within=[1, 2], made=made)
    without_2 = nested_choices(cases, fold_of, within=[0, 1], made=made)
    assert set(made) == {frozenset({0}), frozenset({1}), frozenset({2})}          # four choices, three made
    subset = {c: cases[c] for c in cases if fold_of[c] != 0}
    alone = nested_choices(subset, {c: fold_of[c] for c in subset})
    assert set(without_0) == {1, 2} and all(without_0[f].chosen == alone[f].chosen for f in alone)
    assert all(without_0[f].held_out == alone[f].held_out for f in alone)
    assert [p.to_dict() for p in without_0[2].options] == [p.to_dict() for p in alone[2].options]
    assert without_0[2].options is made[frozenset({1})][0] is without_2[0].options
    assert set(without_2[0].held_out) == {c for c in cases if fold_of[c] == 0}


# ------------------------------------------------------------------------------------------ the whole command

BLOB = (slice(0, 2), slice(0, 4), slice(4, 12))  # 64 voxels on the rule's own false positive: no post-processing
#                                                   removes it (larger than every size, touching ZADC < -2)


def _exact_but_not_on_fold_2(model: str, i: int) -> np.ndarray:
    """Exact on the lesion cases (folds 0 and 1: raw Dice 1, above A's 0.94), a 64-voxel false positive on the
    lesion-free cases (fold 2: Dice 0, whatever post-processing chosen on folds 0 and 1 does)."""
    prob = np.full(GEO.size_zyx, 0.05, np.float32)
    if i % 3 != 2:
        prob[LESION] = 0.9
    else:
        prob[BLOB] = 1.0
    return prob


def _nested_run(cv, capsys, *extra: str):
    assert cli.main(_run("--nested-choice", *extra)) == 0
    return load_inference_information(cv), capsys.readouterr().out


def test_the_choice_made_without_each_fold_is_the_choice_of_a_run_on_the_other_folds(cv, capsys):
    """A is exact with its post-processing everywhere (nested 1.0), B exact raw on folds 0 and 1 only: the whole run
    chooses A, but without fold 2 the two tie at 1.0 with post-processing and B's raw Dice wins, so fold 2 gets B,
    whose false positive nothing chosen on folds 0 and 1 removes: 6 of 9 cases at Dice 1, 3 at 0."""
    _replace_model(cv, B, _exact_but_not_on_fold_2)
    ensemble = EnsembleFolder.of(cv, [A, B]).path.name
    # the reference: the command itself, given only the other folds (fresh records each time)
    alone = {}
    for k in range(3):
        for name in (A, B):
            ModelFolder(cv / name).postprocessing.unlink(missing_ok=True)
        others = [str(f) for f in range(3) if f != k]
        assert cli.main(["-d", "Tiny", "-c", "3d_fullres", "3d_lowres", "-tr", "TrainerX", "-f", *others,
                         "-np", "1"]) == 0
        alone[k] = load_inference_information(cv).chosen.name
    capsys.readouterr()
    for name in (A, B):
        ModelFolder(cv / name).postprocessing.unlink(missing_ok=True)
    info, out = _nested_run(cv, capsys)
    nested = info.nested_choice
    assert info.chosen.name == A and nested is not None and nested.criterion == "postprocessed"
    assert nested.choices == alone == {0: A, 1: A, 2: B}
    assert nested.num_candidates == 3 and {c.name for c in info.candidates} == {A, B, ensemble}
    by_fold = {f["fold"]: f for f in nested.per_fold}
    assert by_fold[2]["nested_dice"] == 1.0 and by_fold[2]["raw_dice"] == 1.0 and by_fold[2]["postprocessing"] == "none"
    assert [f["dice"] for f in nested.per_fold] == [1.0, 1.0, 0.0]
    assert nested.metrics["dice"]["mean"] == pytest.approx(6 / 9)
    assert nested.metrics["masd"]["n"] == 6 and nested.metrics["masd"]["mean"] == 0.0
    assert info.chosen.postprocessing["nested"]["dice"]["mean"] == 1.0          # the chosen one's, flattered
    # the outer rows are the chosen candidates' own nested rows on their fold
    a_rows = {c: 1.0 for c in _splits(cv)[1]}
    assert {r["case_id"]: r["dice"] for r in nested.per_case} == {**a_rows, "case2": 0.0, "case5": 0.0, "case8": 0.0}
    assert {r["case_id"] for r in nested.per_case if r["candidate"] == B} == {"case2", "case5", "case8"}
    test = {r["metric"]: r for r in nested.paired_test.rows}
    assert nested.paired_test.method == METHOD and test["dice"]["n_pairs"] == 9
    assert nested.paired_test.reference == "rule: ZADC < -2 + post-processing (nested)"
    # the file: a new field, read back as written; the table prints it
    raw = json.loads((cv / INFERENCE_INFORMATION_FILE).read_text())
    assert raw["nested_choice"]["per_fold"][2]["chosen"] == B and raw["provenance"]["options"]["nested_choice"] is True
    assert info == load_inference_information(cv)
    assert re.search(r"\| \*\*fully nested choice \(candidate \+ post-processing chosen without the fold\)\*\* "
                     r"\| 0\.6667 \[[0-9.]+, [0-9.]+\] \| 0\.00 \(6\) \| 0\.6667 \|", out)
    # fold 2's B keeps its false positive raw too: its raw Dice there (new column) and with post-processing are 0
    assert f"| 2 | 3 | {B} | 1.0000 | 1.0000 | {ensemble} (1.0000) | none | 0.0000 | 0.0000 |" in out
    assert by_fold[2]["raw_dice_on_fold"] == 0.0 and {r["raw_dice"] for r in nested.per_case if r["fold"] == 2} == {0.0}
    assert "| the same choices without post-processing (Dice only) | " in out
    assert f"| 0 | 3 | {A} | " in out and by_fold[0]["scores"][B]["nested_dice"] == 0.5
    assert f"| {A} + post-processing (nested), chosen on all cases | 1.0000 [1.0000, 1.0000] | 0.00 (9) |" in out
    assert "(difference: the fully nested choice minus the rule + its nested post-processing)" in out
    # an existing record of A that this procedure would not make (its every choice removes the lesions) is kept and
    # decides the command's choice, but the estimate is of the procedure: the same choices and numbers as before
    record = json.loads(ModelFolder(cv / A).postprocessing.read_text())
    fifty = {"min_component_voxels": 50}
    record.update(chosen=fifty, chosen_name="remove < 50 vox")
    record["nested"]["chosen_per_fold"] = {f: fifty for f in record["nested"]["chosen_per_fold"]}
    write_json(record, ModelFolder(cv / A).postprocessing)
    kept, out = _nested_run(cv, capsys)
    kept_a = next(c for c in kept.candidates if c.name == A)
    assert kept_a.postprocessing["action"] == "kept the existing record"
    assert kept_a.nested_mean() == pytest.approx(3 / 9)
    assert kept.chosen.name != A
    assert kept.nested_choice.choices == nested.choices and kept.nested_choice.metrics == nested.metrics


def test_without_the_flag_nothing_changes_and_older_files_load(cv, capsys):
    assert cli.main(_run()) == 0
    out = capsys.readouterr().out
    info = load_inference_information(cv)
    assert info.nested_choice is None and "Fully nested" not in out
    raw = json.loads((cv / INFERENCE_INFORMATION_FILE).read_text())
    assert raw["nested_choice"] is None
    del raw["nested_choice"]                                                    # a file of an earlier version
    write_json(raw, cv / INFERENCE_INFORMATION_FILE)
    assert load_inference_information(cv) == info


def test_select_by_raw_is_honoured_and_two_folds_are_refused(cv, capsys):
    info, out = _nested_run(cv, capsys, "--select-by", "raw")
    assert info.nested_choice.criterion == "raw" and "by raw Dice, among 3" in out
    assert all(f["nested_dice"] is None for f in info.nested_choice.per_fold)
    assert set(info.nested_choice.choices.values()) == {info.chosen.name}     # the ensemble: raw Dice 1 everywhere
    # one candidate chosen without every fold: its own nested rows, to the bootstrap interval
    assert info.nested_choice.metrics == info.chosen.postprocessing["nested"]
    shutil.rmtree(cv / "ensembles")
    (cv / INFERENCE_INFORMATION_FILE).unlink()
    for name in (A, B):
        ModelFolder(cv / name).postprocessing.unlink()
    before = _written(cv)
    argv = ["-d", "Tiny", "-c", "3d_fullres", "3d_lowres", "-tr", "TrainerX", "-f", "0", "1", "-np", "1",
            "--nested-choice", "-q"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "--nested-choice needs at least 3 folds" in err and "got fold(s) 0, 1;" in err
    assert _written(cv) == before == set()
