"""Training-seed spread: a recipe trained with several ``--seed`` values, and recipes compared over their seeds.

A 5-fold CV score of one training is one draw: the same plans trained with ``hiennu_train ... --seed 1``
instead of the default 12345 scored 0.468 instead of 0.518 Dice on the 37 BONBID dev cases (results.md,
session 30). The paired per-case tests of ``compare_cv_folds.py`` and the study treat each trained model as
fixed, so they cannot see that spread. This script reads the final validation of several trainings per
recipe (``fold_K/validation/summary_per_case.csv``, native geometry, no post-processing) and prints

1. every training: its seed (``fold_K/debug.json``) and its score over the common folds' cases (mean Dice and
   NSD over the cases; MASD, in mm, over the cases where every training shown defines it, their count
   in the line above the table);
2. per recipe: mean ± SD (ddof 1) [min, max] of those scores over its trainings, and the case-level spread:
   the mean over cases of the per-case SD of Dice across the trainings, and how many cases move by more
   than 0.2 Dice between two trainings;
3. per fold: each training's mean Dice on the fold's cases (one fold that collapses in one training shows
   here);
4. every further recipe against the first: the difference of the seed means per metric, Welch's t-test on
   the trainings' scores (each training one sample: the test that sees the seed spread, weak with few
   seeds); where both recipes hold trainings of the same seed, the differences within each shared seed
   (for the same network a seed draws the same initial weights and batches, so within a seed much of what
   differs is what the recipe changes; the report says when the networks differ), their mean ± SD and the
   paired t-test over the seeds; and the paired Wilcoxon signed-rank test (Holm across the three metrics)
   on each case's score averaged over each recipe's trainings (per case; still blind to the seed spread
   that averaging leaves).

All trainings must hold the same cases in each common fold (the same split), as in ``compare_cv_folds.py``.
Why a script of its own: nothing else in hiennu groups trainings by recipe; the study and the choice
compare one training per candidate.

    R=$hiennu_results/Dataset001_BONBID
    python benchmarks/seed_spread.py \
        --recipe narrow-2d $R/TrainerDiceFocal__hiennuPlans__2d $R/TrainerDiceFocal__SEED1__2d \
        --recipe rotation-2d $R/TrainerDiceFocal__ROT__2d
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from hiennu.evaluation.paired_comparison import paired_markdown
from hiennu.evaluation.report import paired_test_across_metrics
from hiennu.training.fold_layout import finished_validations

METRICS = ("dice", "masd", "nsd")
LABELS = {"dice": "Dice", "masd": "MASD (mm)", "nsd": "NSD"}
BIG_MOVE = 0.2


@dataclass
class Training:
    """One 5-fold training: its folder, the seed(s) its folds recorded, and per finished fold its per-case rows."""

    model: Path
    seeds: list[int]
    folds: dict[int, list[dict]]
    networks: list[str] = field(default_factory=list)  # the network plans the folds recorded, as JSON text

    @property
    def seed_text(self) -> str:
        return ", ".join(map(str, self.seeds)) if self.seeds else "?"


@dataclass
class Recipe:
    name: str
    trainings: list[Training]


def _defined(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def load_training(model: Path) -> Training:
    """The finished folds of ``model`` (those whose final validation wrote its per-case table) and their seeds."""
    folds, seeds, networks = finished_validations(model), set(), set()
    for k in folds:
        debug = model / f"fold_{k}" / "debug.json"
        if debug.is_file():
            try:
                record = json.loads(debug.read_text())
            except ValueError as error:
                raise SystemExit(f"{debug}: not readable JSON ({error}); the fold's record is damaged and its seed "
                                 f"unknown: leave this training out, or train the fold again") from None
            if record.get("seed") is not None:
                seeds.add(int(record["seed"]))
            network = (record.get("configuration") or {}).get("network")
            if network is not None:
                networks.add(json.dumps(network, sort_keys=True))
    if not folds:
        raise SystemExit(f"{model}: no finished fold (no fold_K/validation/summary_per_case.csv); train it with "
                         f"hiennu_train, or check the folder")
    return Training(model, sorted(seeds), folds, sorted(networks))


def common_folds(recipes: list[Recipe]) -> list[int]:
    """The folds finished in every training, after checking they hold the same cases everywhere."""
    trainings = [t for r in recipes for t in r.trainings]
    common = sorted(set.intersection(*(set(t.folds) for t in trainings)))
    if not common:
        raise SystemExit("no fold is finished in every training: " +
                         "; ".join(f"{t.model.name} has {sorted(t.folds)}" for t in trainings))
    first = trainings[0]
    for k in common:
        cases = {r["case_id"] for r in first.folds[k]}
        for t in trainings[1:]:
            other = {r["case_id"] for r in t.folds[k]}
            if other != cases:
                raise SystemExit(f"fold {k}: {t.model.name} validated other cases than {first.model.name} "
                                 f"({len(cases ^ other)} differ): trained on different splits, not comparable")
    return common


def case_table(training: Training, folds: list[int]) -> dict[str, dict]:
    """case id -> its per-case row, over ``folds``."""
    return {r["case_id"]: r for k in folds for r in training.folds[k]}


def training_scores(table: dict[str, dict], masd_cases: set[str]) -> dict[str, float]:
    """Mean Dice and NSD over the cases, MASD over ``masd_cases`` (cases where every training defines it)."""
    out = {}
    for metric in METRICS:
        cases = masd_cases if metric == "masd" else set(table)
        values = [float(table[c][metric]) for c in cases if _defined(table[c].get(metric))]
        out[metric] = float(np.mean(values)) if values else math.nan
    return out


def spread(values: list[float], digits: int = 3) -> str:
    """``mean ± SD [min, max]`` (SD with ddof 1; a single value has no SD)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.{digits}f} (one training)"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f} [{v.min():.{digits}f}, {v.max():.{digits}f}]"


def averaged_rows(tables: list[dict[str, dict]]) -> list[dict]:
    """Per case, each metric averaged over the trainings (NaN where any training leaves it undefined)."""
    rows = []
    for case in tables[0]:
        row = {"case_id": case}
        for metric in METRICS:
            values = [t[case].get(metric) for t in tables]
            row[metric] = float(np.mean(values)) if all(_defined(v) for v in values) else math.nan
        rows.append(row)
    return rows


def case_spread(tables: list[dict[str, dict]]) -> tuple[float, int]:
    """Mean over cases of the per-case SD (ddof 1) of Dice across trainings, and the number of cases whose
    Dice range across the trainings exceeds ``BIG_MOVE``."""
    dice = np.array([[float(t[c]["dice"]) for t in tables] for c in tables[0]])
    return float(dice.std(axis=1, ddof=1).mean()), int(((dice.max(axis=1) - dice.min(axis=1)) > BIG_MOVE).sum())


def report(recipes: list[Recipe]) -> str:
    """The Markdown report (see the module docstring)."""
    folds = common_folds(recipes)
    tables = {id(t): case_table(t, folds) for r in recipes for t in r.trainings}
    all_tables = list(tables.values())
    cases = sorted(all_tables[0])
    masd_cases = {c for c in cases if all(_defined(t[c].get("masd")) for t in all_tables)}
    scores = {id(t): training_scores(tables[id(t)], masd_cases) for r in recipes for t in r.trainings}

    lines = [f"Folds finished in every training: {', '.join(map(str, folds))} ({len(cases)} cases); native "
             f"geometry, no post-processing; MASD over the {len(masd_cases)} cases where every training defines it.",
             "", "| recipe | training | seed | Dice | MASD (mm) | NSD |", "|---|---|---|---|---|---|"]
    for r in recipes:
        for t in r.trainings:
            s = scores[id(t)]
            lines.append(f"| {r.name} | {t.model.name} | {t.seed_text} | {s['dice']:.3f} | {s['masd']:.2f} | "
                         f"{s['nsd']:.3f} |")

    lines += ["", "Over each recipe's trainings: mean ± SD (ddof 1) [min, max]; case spread: the mean over cases of "
              f"the per-case SD of Dice across the trainings, and the cases whose Dice moves by more than {BIG_MOVE} "
              "between two of them.", "",
              "| recipe | trainings | Dice | MASD (mm) | NSD | case spread of Dice (SD) | cases moving > "
              f"{BIG_MOVE} |", "|---|---|---|---|---|---|---|"]
    for r in recipes:
        cells = [spread([scores[id(t)][m] for t in r.trainings], 2 if m == "masd" else 3) for m in METRICS]
        if len(r.trainings) > 1:
            sd, moving = case_spread([tables[id(t)] for t in r.trainings])
            extra = [f"{sd:.3f}", f"{moving} of {len(cases)}"]
        else:
            extra = ["n/a", "n/a"]
        lines.append(f"| {r.name} | {len(r.trainings)} | " + " | ".join(cells + extra) + " |")

    lines += ["", "Mean Dice per fold:", "", "| recipe | training | " +
              " | ".join(f"fold {k} ({len(recipes[0].trainings[0].folds[k])})" for k in folds) + " |",
              "|---|---|" + "---|" * len(folds)]
    for r in recipes:
        for t in r.trainings:
            means = [np.mean([float(row["dice"]) for row in t.folds[k]]) for k in folds]
            lines.append(f"| {r.name} | {t.model.name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")

    base = recipes[0]
    for other in recipes[1:]:
        lines += ["", f"**{other.name} against {base.name}** ({len(other.trainings)} against {len(base.trainings)} "
                  "trainings): difference of the seed means, and Welch's t-test over the trainings' scores (n/a "
                  "with fewer than two trainings on a side, or no spread on either):", "",
                  "| metric | difference | Welch t | p |", "|---|---|---|---|"]
        for metric in METRICS:
            a = [scores[id(t)][metric] for t in other.trainings]
            b = [scores[id(t)][metric] for t in base.trainings]
            diff = float(np.mean(a) - np.mean(b))
            digits = 2 if metric == "masd" else 3
            if len(a) > 1 and len(b) > 1 and np.var(a, ddof=1) + np.var(b, ddof=1) > 0:
                test = stats.ttest_ind(a, b, equal_var=False)
                t_cell, p_cell = f"{test.statistic:.2f}", f"{test.pvalue:.3g}"
            else:
                t_cell = p_cell = "n/a"
            lines.append(f"| {LABELS[metric]} | {diff:+.{digits}f} | {t_cell} | {p_cell} |")
        lines += paired_by_seed(base, other, scores)
        per_case = {other.name: averaged_rows([tables[id(t)] for t in other.trainings]),
                    base.name: averaged_rows([tables[id(t)] for t in base.trainings])}
        lines += ["", "Paired two-sided Wilcoxon on each case's score averaged over each recipe's trainings, Holm "
                  "across the three metrics:", "",
                  paired_markdown(paired_test_across_metrics(per_case, other.name, base.name, METRICS)).rstrip()]
    return "\n".join(lines) + "\n"


def paired_by_seed(base: Recipe, other: Recipe, scores: dict[int, dict[str, float]]) -> list[str]:
    """Rows for the trainings of the two recipes that share a seed: where the recipes build the same network
    (``debug.json`` records it) and read the same cases, the same seed draws the same initial weights and batches,
    so the difference within a seed is free of much of the seed spread. Per shared seed the difference, then
    their mean ± SD and the paired t-test over the seeds (n/a with fewer than two)."""
    by_seed = {t.seeds[0]: t for t in base.trainings if len(t.seeds) == 1}
    pairs = [(t.seeds[0], t, by_seed[t.seeds[0]]) for t in other.trainings
             if len(t.seeds) == 1 and t.seeds[0] in by_seed]
    if not pairs:
        return []
    same_network = all(t.networks and t.networks == u.networks for _, t, u in pairs)
    shared = ("the same initial weights and batches" if same_network else
              "not the same initial weights (the recipes build different networks): little is paired")
    lines = ["", f"Paired by seed ({len(pairs)} shared: {', '.join(str(s) for s, _, _ in pairs)}; a shared seed means "
             f"{shared}): {other.name} minus {base.name} within each seed; mean ± SD over the seeds and the paired "
             "t-test (n/a with fewer than two seeds, or no spread):", "",
             "| metric | " + " | ".join(f"seed {s}" for s, _, _ in pairs) + " | mean ± SD | paired t | p |",
             "|---|" + "---|" * (len(pairs) + 3)]
    for metric in METRICS:
        digits = 2 if metric == "masd" else 3
        a = np.array([scores[id(t)][metric] for _, t, _ in pairs])
        b = np.array([scores[id(u)][metric] for _, _, u in pairs])
        d = a - b
        summary = f"{d.mean():+.{digits}f}" + (f" ± {d.std(ddof=1):.{digits}f}" if len(d) > 1 else "")
        if len(d) > 1 and d.std(ddof=1) > 0:
            test = stats.ttest_rel(a, b)
            t_cell, p_cell = f"{test.statistic:.2f}", f"{test.pvalue:.3g}"
        else:
            t_cell = p_cell = "n/a"
        lines.append(f"| {LABELS[metric]} | " + " | ".join(f"{v:+.{digits}f}" for v in d) +
                     f" | {summary} | {t_cell} | {p_cell} |")
    return lines


def parse_recipes(groups: list[list[str]]) -> list[Recipe]:
    recipes, names = [], set()
    for group in groups:
        if len(group) < 2:
            raise SystemExit(f"--recipe {' '.join(group)}: give a name and at least one model folder")
        name, models = group[0], [Path(m) for m in group[1:]]
        if name in names:
            raise SystemExit(f"--recipe {name}: the name is given twice")
        names.add(name)
        for m in models:
            if not m.is_dir():
                raise SystemExit(f"--recipe {name}: {m} is not a folder (a TRAINER__PLANS__CONFIG model folder)")
        recipes.append(Recipe(name, [load_training(m) for m in models]))
    return recipes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", nargs="+", action="append", required=True, metavar="NAME_THEN_MODELS",
                   help="a recipe's name, then its trainings' model folders (TRAINER__PLANS__CONFIG, one per seed); "
                        "repeat for more recipes: every further one is compared with the first")
    args = p.parse_args(argv)
    print(report(parse_recipes(args.recipe)), end="")


if __name__ == "__main__":
    main()
