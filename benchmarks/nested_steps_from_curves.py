"""How many training steps would cross-validation choose, and what would that choice score? Read from the
training curves of a 5-fold model, nested: no fold's step count is chosen on that fold.

Each fold's ``progress.json`` holds the grid validation Dice of its held-out cases after every epoch (the
mean over the fold's cases of :func:`hiennu.evaluation.metrics.dice` at probability 0.5, on the
preprocessed grid, no post-processing). For each outer fold the epoch with the highest case-weighted mean
of the *other* folds' curves is chosen, and the outer fold's own value at that epoch is its estimate; pooled
over the folds (weighted by cases) that estimates "train for the CV-chosen number of steps" without a
checkpoint chosen on the cases it is scored on. Printed beside it: the last epoch (what ``checkpoint_final``
scored on the grid) and the rule ZADC < -2 on the same grid and cases (from the preprocessed ZADC channel).

Why a script of its own: the checkpoints of the intermediate epochs are not kept, so this reads only the
curves; it needs every fold to have run the same epochs (a fixed schedule, or a time budget that gave them
the same count; the shortest fold bounds the epochs compared). Grid Dice is not the native-geometry Dice of
results.md, but the rule's grid Dice beside it is measured the same way.

    python benchmarks/nested_steps_from_curves.py MODEL_FOLDER PREPROCESSED_CASE_DIR [--zadc-channel 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hiennu.evaluation.metrics import dice
from hiennu.training.data import load_preprocessed_case


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="TRAINER__PLANS__CONFIG folder with fold_0 ... fold_4")
    p.add_argument("cases", type=Path, help="the configuration's preprocessed case folder (CASE.npy, CASE_seg.npy)")
    p.add_argument("--zadc-channel", type=int, default=1)
    p.add_argument("--threshold", type=float, default=-2.0)
    return p.parse_args(argv)


def nested_choice(curves: np.ndarray, weights: np.ndarray) -> list[int]:
    """For each fold k, the epoch maximizing the ``weights``-weighted mean of the other folds' curves.

    curves: (folds, epochs) validation Dice; weights: (folds,) cases per fold. Ties: the earliest epoch.
    """
    chosen = []
    for k in range(curves.shape[0]):
        others = [j for j in range(curves.shape[0]) if j != k]
        mean = (curves[others] * weights[others, None]).sum(0) / weights[others].sum()
        chosen.append(int(np.argmax(mean)))
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folds = sorted(args.model.glob("fold_[0-9]"))
    if len(folds) < 3:
        raise SystemExit(f"{args.model}: needs 3 folds or more, found {len(folds)}")
    for f in folds:
        for name in ("progress.json", "debug.json"):
            if not (f / name).is_file():
                raise SystemExit(f"{f / name} is missing: {f.name} has not been trained (or not by hiennu_train)")
    progress = [json.loads((f / "progress.json").read_text()) for f in folds]
    splits = [json.loads((f / "debug.json").read_text()).get("val_cases") for f in folds]
    epochs = min(len(p["val_dice"]) for p in progress)
    curves = np.array([[np.nan if v is None else v for v in p["val_dice"][:epochs]] for p in progress])
    if np.isnan(curves).any():
        raise SystemExit("some epochs were not validated (--val-every > 1): the curves cannot be compared")
    rule = []
    for f, cases in zip(folds, splits):
        if not cases:
            raise SystemExit(f"{f}/debug.json does not list the fold's validation cases")
        per_case = []
        for case in cases:
            data, seg, _ = load_preprocessed_case(args.cases, case)
            per_case.append(dice(np.asarray(seg[0]) > 0, np.asarray(data[args.zadc_channel]) < args.threshold))
        rule.append(float(np.mean(per_case)))
    weights = np.array([len(c) for c in splits], dtype=float)
    chosen = nested_choice(curves, weights)
    nested = np.array([curves[k, e] for k, e in enumerate(chosen)])
    last = curves[:, -1]
    print(f"{args.model.name}: {len(folds)} folds, {epochs} epochs compared; grid validation Dice, no post-processing")
    print("fold  cases  chosen epoch  at it   last epoch  rule")
    for k, f in enumerate(folds):
        print(f"{f.name:6s}{int(weights[k]):5d}  {chosen[k]:12d}  {nested[k]:6.3f}  {last[k]:10.3f}  {rule[k]:5.3f}")
    w = weights / weights.sum()
    print(f"pooled        nested choice {float(w @ nested):.3f}   last epoch {float(w @ last):.3f}   "
          f"rule {float(w @ np.array(rule)):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
