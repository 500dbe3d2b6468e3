"""benchmarks/nested_steps_from_curves.py: each fold's epoch is chosen on the other folds' curves only, and the
whole script reads a model folder and the preprocessed cases."""

from __future__ import annotations

import json

import numpy as np

from helpers import load_benchmark


def _script():
    return load_benchmark("nested_steps_from_curves")


def test_each_fold_is_chosen_on_the_other_folds_only():
    curves = np.array([[0.9, 0.1, 0.1],    # fold 0 alone would pick epoch 0
                       [0.1, 0.5, 0.2],
                       [0.1, 0.5, 0.6]])
    weights = np.array([1.0, 1.0, 2.0])
    # fold 0: others (1, 2) weighted 1:2 -> [0.1, 0.5, 0.4667] -> epoch 1
    # fold 1: others (0, 2) -> [(0.9 + 0.2) / 3, (0.1 + 1.0) / 3, (0.1 + 1.2) / 3] -> epoch 2
    # fold 2: others (0, 1) -> [0.5, 0.3, 0.15] -> epoch 0
    assert _script().nested_choice(curves, weights) == [1, 2, 0]
    assert _script().nested_choice(np.ones((3, 4)), np.ones(3)) == [0, 0, 0]  # ties: the earliest epoch


def test_the_script_reports_the_nested_choice_the_last_epoch_and_the_rule(tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    model = tmp_path / "TrainerX__P__3d_fullres"
    rng = np.random.default_rng(0)
    for k in range(3):
        ids = [f"C{k}{i}" for i in range(2)]
        for case in ids:
            zadc = rng.normal(size=(4, 6, 6)).astype(np.float32) * 2
            seg = (zadc < -2)[None].astype(np.uint8)  # the rule is exact: its Dice is 1 (or 1 for both empty)
            np.save(cases / f"{case}.npy", np.stack([np.zeros_like(zadc), zadc]))
            np.save(cases / f"{case}_seg.npy", seg)
            (cases / f"{case}.json").write_text("{}")
        fold = model / f"fold_{k}"
        fold.mkdir(parents=True)
        (fold / "progress.json").write_text(json.dumps({"val_dice": [0.2 + 0.1 * k, 0.5, 0.3]}))
        (fold / "debug.json").write_text(json.dumps({"val_cases": ids}))
    assert _script().main([str(model), str(cases)]) == 0
    out = capsys.readouterr().out
    pooled = [line for line in out.splitlines() if line.startswith("pooled")][0]
    assert "nested choice 0.500" in pooled and "last epoch 0.300" in pooled and "rule 1.000" in pooled


def test_a_fold_without_its_training_files_is_named(tmp_path):
    import pytest
    model = tmp_path / "TrainerX__P__3d_fullres"
    for k in range(3):
        (model / f"fold_{k}").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"fold_0.progress\.json is missing: fold_0 has not been trained"):
        _script().main([str(model), str(tmp_path)])
