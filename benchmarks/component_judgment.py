"""How well a network judges the ZADC rule's components, beside the hand-made features of the lesion filter.

The judged-rule post-processing (:mod:`hiennu.postprocessing.candidates`) keeps or drops each 26-connected
component of the rule ``ZADC < -2`` after the ADC cap, by a logistic filter on three hand-made features (log volume,
extent along z, share of the shell outside the brain) and the network's mean probability over the component
(:mod:`hiennu.postprocessing.lesion_filter`). Its nested Dice moves with one or two lesion-free cases (results.md,
sessions 35-37), which says little about whether the network judges components well in general. This script scores
the judgment itself, component by component, with no threshold and no Dice: for each model (a results folder whose
folds kept their validation probabilities, ``hiennu_train --npz``) and each fold ``k`` of its split,

- the ADC cap (the :data:`~hiennu.postprocessing.candidates.FIXED_CAP_QUANTILE` of the lesion ADC) is derived
  from the other folds' cases, and the rule's components of every case are taken after it;
- a component is a lesion when it shares a voxel with the reference;
- the filter with the three hand-made features and the filter with the network's probability as a fourth are
  fitted on the other folds' components (:func:`~hiennu.postprocessing.lesion_filter.fit_component_filter`, the
  code the post-processing runs) and score fold ``k``'s components.

Pooled over the folds, each score's ROC AUC (lesion against false component) is printed with a 95 % interval from
resampling whole cases (components of one case are not independent), for every single feature (oriented so that
higher means lesion: the outside-shell share counts negatively) and for both fitted filters, over all components and
over the small ones (below the median volume of all components, where the decisions are hard), and over all of them
with each (lesion, false component) pair weighted by how much of its case's Dice each decision moves (the component's
volume over its case's lesion volume, at most 1, and 1 in a lesion-free case: Dice is a mean over cases, so a speck
in a case with a small lesion or none counts as much as a large component elsewhere), each with the AUC the network
adds to the three features; then every component of the
cases without a lesion, with its mean probability.

Why a script of its own: the post-processing's choice reports Dice after a threshold, which two lesion-free cases can
move by 0.05; a reader deciding whether the network's judgment carries to new cases needs the ranking itself. The
cases are read by :func:`hiennu.postprocessing.selection.load_cases`, the probabilities checked by
:func:`hiennu.ensembling.cv_probabilities.collect_model_cv`.

    python benchmarks/component_judgment.py -d BONBID -m TrainerDiceFocal__hiennuPlans__3d_fullres
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage, stats

from hiennu.ensembling.cv_probabilities import collect_model_cv
from hiennu.errors import HiennuError
from hiennu.io.dataset_json import load_dataset_json
from hiennu.masks import brain_mask
from hiennu.paths import raw_root, resolve_dataset, results_root
from hiennu.postprocessing.candidates import FIXED_CAP_QUANTILE
from hiennu.postprocessing.lesion_filter import (FEATURES, FEATURES_WITH_PROBABILITY, FilterCase,
                                                 component_features, fit_component_filter)
from hiennu.postprocessing.record import PostProcessing
from hiennu.postprocessing.selection import CaseImages, caps_from, load_cases

# +1: a higher value means a lesion more likely; -1: a lower one (a component mostly ringed by non-brain is a rim speck).
ORIENTATION = {"log_volume_mm3": 1.0, "extent_z_mm": 1.0, "outside_shell": -1.0, "mean_probability": 1.0}
HAND = "filter, 3 hand-made features"
JUDGED = "filter, + network's mean probability"
GAIN = "what the network's probability adds (second filter minus first)"
BOOTSTRAP = 2000


@dataclass
class Components:
    """Every fold's held-out components, pooled, one row each: the case it belongs to, whether it touches the
    reference, its volume in mm³, its features (:data:`FEATURES_WITH_PROBABILITY` order), the two filters'
    scores (probabilities of being a lesion, fitted on the other folds) and the reference volume of its case in mm³."""

    case: np.ndarray
    lesion: np.ndarray
    volume_mm3: np.ndarray
    features: np.ndarray
    hand: np.ndarray
    judged: np.ndarray
    case_lesion_mm3: np.ndarray

    @property
    def dice_weight(self) -> np.ndarray:
        """Roughly how much of its case's Dice one decision on the component moves: its volume over its case's
        lesion volume, at most 1 (1 in a case without a lesion, where keeping any component makes the Dice 0)."""
        share = np.divide(self.volume_mm3, self.case_lesion_mm3, out=np.ones_like(self.volume_mm3),
                          where=self.case_lesion_mm3 > 0)
        return np.minimum(share, 1.0)


def capped_rule(c: CaseImages, cap: float | None) -> np.ndarray:
    """The rule ``ZADC < -2`` in the brain, after the ADC cap ``cap`` (none when None), as judged-rule's record
    makes it (``start_from_rule``, then the cap); bool (z, y, x)."""
    return c.postprocessed(PostProcessing(start_from_rule=True, max_adc=cap)).astype(bool)


def filter_case(c: CaseImages, cap: float | None) -> FilterCase:
    """The case as the judged-rule filter sees it: the capped rule's mask, the brain, the reference, the spacing
    and the network's probabilities."""
    return FilterCase(capped_rule(c, cap), brain_mask(c.adc), c.ref, c.spacing_zyx, c.probabilities)


def held_out_components(cases: dict[str, CaseImages], fold_of: dict[str, int]) -> Components:
    """Every fold's components scored by the filters fitted on the other folds (see the module docstring)."""
    rows: dict[str, list] = {k: [] for k in ("case", "lesion", "volume", "features", "hand", "judged", "reference")}
    for fold in sorted(set(fold_of.values())):
        train = [c for c in sorted(cases) if fold_of[c] != fold]
        caps = caps_from(cases, train, (FIXED_CAP_QUANTILE,))
        cap = caps[0] if caps else None
        fitting = [filter_case(cases[c], cap) for c in train]
        hand = fit_component_filter(fitting, features=FEATURES)
        judged = fit_component_filter(fitting, features=FEATURES_WITH_PROBABILITY)
        if hand is None or judged is None:
            raise HiennuError(f"fold {fold}: the other folds' components are all lesions or all false ones; no "
                              f"filter can be fitted to judge with")
        for case in sorted(c for c in cases if fold_of[c] == fold):
            f = filter_case(cases[case], cap)
            labels, x = component_features(f.mask, f.brain, f.spacing_zyx, FEATURES_WITH_PROBABILITY, f.probabilities)
            n = x.shape[0]
            if n == 0:
                continue
            touches = ndimage.maximum(f.ref, labels, np.arange(1, n + 1)) > 0
            rows["case"] += [case] * n
            rows["lesion"].append(np.asarray(touches, bool))
            rows["volume"].append(np.exp(x[:, 0]))
            rows["features"].append(x)
            rows["hand"].append(hand.probabilities(x[:, :len(FEATURES)]))
            rows["judged"].append(judged.probabilities(x))
            rows["reference"].append(np.full(n, f.ref.sum() * float(np.prod(f.spacing_zyx))))
    if not rows["lesion"]:
        raise HiennuError("the rule has no component in any case after the ADC cap; nothing to judge")
    return Components(np.asarray(rows["case"]), np.concatenate(rows["lesion"]), np.concatenate(rows["volume"]),
                      np.concatenate(rows["features"]), np.concatenate(rows["hand"]), np.concatenate(rows["judged"]),
                      np.concatenate(rows["reference"]))


def auc(score: np.ndarray, lesion: np.ndarray) -> float:
    """ROC AUC of ``score`` for ``lesion``: scipy's Mann-Whitney U of the lesions' scores over n1 n0 (ties count
    half); nan without both kinds."""
    lesion = np.asarray(lesion, bool)
    n1, n0 = int(lesion.sum()), int((~lesion).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float(stats.mannwhitneyu(score[lesion], score[~lesion], method="asymptotic").statistic / (n1 * n0))


def weighted_auc(score: np.ndarray, lesion: np.ndarray, weight: np.ndarray) -> float:
    """ROC AUC with each (lesion, false component) pair weighted by the product of the two components' weights: the
    weighted share of the pairs ranked right (ties count half); with equal weights it is :func:`auc`. nan without
    both kinds."""
    lesion = np.asarray(lesion, bool)
    weight = np.asarray(weight, float)
    w1, w0 = weight[lesion].sum(), weight[~lesion].sum()
    if not lesion.any() or lesion.all():
        return float("nan")
    values, index = np.unique(score, return_inverse=True)
    false_at = np.bincount(index, weights=np.where(lesion, 0.0, weight), minlength=len(values))
    false_below = np.cumsum(false_at) - false_at
    ranked_right = (false_below[index] + 0.5 * false_at[index])[lesion]
    return float((weight[lesion] * ranked_right).sum() / (w1 * w0))


def resamples(comp: Components, select: np.ndarray, seed: int = 0, rounds: int = BOOTSTRAP):
    """Component indices of ``rounds`` resamples of the cases of ``select`` (cases drawn with replacement, each
    bringing all its selected components); a resample holding one kind of component only is skipped."""
    cases = np.unique(comp.case[select])
    index = {c: np.nonzero(select & (comp.case == c))[0] for c in cases}
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        take = np.concatenate([index[c] for c in rng.choice(cases, size=len(cases), replace=True)])
        if comp.lesion[take].any() and not comp.lesion[take].all():
            yield take


def interval(point: float, draws: Sequence[float]) -> tuple[float, float, float]:
    """(point, 2.5th, 97.5th percentile of ``draws``); nan bounds without draws."""
    if not len(draws):
        return point, float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def scores_of(comp: Components) -> dict[str, np.ndarray]:
    """Every score to rank components by: each feature, oriented (:data:`ORIENTATION`), and the two filters."""
    out = {name: ORIENTATION[name] * comp.features[:, i] for i, name in enumerate(FEATURES_WITH_PROBABILITY)}
    out[HAND], out[JUDGED] = comp.hand, comp.judged
    return out


def auc_intervals(comp: Components, select: np.ndarray, seed: int = 0, rounds: int = BOOTSTRAP,
                  by_dice_weight: bool = False) -> dict[str, tuple[float, float, float]]:
    """Each score's AUC over the components ``select`` (:func:`weighted_auc` by :attr:`Components.dice_weight` when
    ``by_dice_weight``), with its case-resampled 95 % interval, and the judged filter's minus the hand-made one's
    (paired: the same resamples), as (point, low, high)."""
    scores = scores_of(comp)

    def area(s: np.ndarray, rows: np.ndarray) -> float:
        if by_dice_weight:
            return weighted_auc(s[rows], comp.lesion[rows], comp.dice_weight[rows])
        return auc(s[rows], comp.lesion[rows])

    draws: dict[str, list[float]] = {k: [] for k in scores}
    for take in resamples(comp, select, seed, rounds):
        for k, s in scores.items():
            draws[k].append(area(s, take))
    out = {k: interval(area(s, np.nonzero(select)[0]), draws[k]) for k, s in scores.items()}
    out[GAIN] = interval(out[JUDGED][0] - out[HAND][0], np.subtract(draws[JUDGED], draws[HAND]))
    return out


def table(comp: Components, seed: int = 0, rounds: int = BOOTSTRAP) -> str:
    """The AUC table of one model's held-out components (markdown); ``rounds`` bootstrap resamples per interval."""
    median = float(np.median(comp.volume_mm3))
    small = comp.volume_mm3 < median
    every = np.ones(len(comp.lesion), bool)
    results = [auc_intervals(comp, every, seed, rounds), auc_intervals(comp, small, seed, rounds),
               auc_intervals(comp, every, seed, rounds, by_dice_weight=True)]
    lines = [f"| score | AUC, all {every.sum()} components ({int(comp.lesion.sum())} lesion) [95 % CI] | "
             f"AUC, the {int(small.sum())} below {median:.0f} mm³ ({int(comp.lesion[small].sum())} lesion) "
             f"[95 % CI] | AUC, all, weighted by their share of the case's Dice [95 % CI] |", "|---|---|---|---|"]
    for k in results[0]:
        sign = "+" if k == GAIN else ""
        lines.append(f"| {k} | " + " | ".join(f"{r[k][0]:{sign}.3f} [{r[k][1]:{sign}.3f}, {r[k][2]:{sign}.3f}]"
                                             for r in results) + " |")
    return "\n".join(lines)


def lesion_free_lines(comp: Components, cases: dict[str, CaseImages]) -> list[str]:
    """One line per case without a lesion: its components after the cap, each with its volume and mean
    probability, and the two filters' scores."""
    lines = []
    for case in sorted(c for c, images in cases.items() if not images.ref.any()):
        rows = np.nonzero(comp.case == case)[0]
        parts = [f"{comp.volume_mm3[i]:.0f} mm³ p {comp.features[i, 3]:.3f} (filters {comp.hand[i]:.2f} / "
                 f"{comp.judged[i]:.2f})" for i in rows]
        lines.append(f"- {case} (no lesion): {len(rows)} component(s) after the cap" + (": " + "; ".join(parts)
                                                                                         if parts else ""))
    return lines


def load_model(model_dir: Path, raw_dir: Path, folds: Sequence[int], dataset: str) -> tuple[dict[str, CaseImages],
                                                                                          dict[str, int]]:
    """The cases a model validated, with their CV probabilities, and the fold that held each out."""
    cv = collect_model_cv(model_dir, folds, dataset)
    ending = load_dataset_json(raw_dir).file_ending
    labels = {case: raw_dir / "labelsTr" / f"{case}{ending}" for case in cv.fold_of}
    cases = load_cases(labels, raw_dir, cv.fold_of, {case: [cv.probabilities(case)] for case in cv.fold_of})
    return cases, cv.fold_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or number")
    parser.add_argument("-m", "--models", nargs="+", required=True,
                        help="model folders (TRAINER__PLANS__CONFIG) under the dataset's results folder, or paths")
    parser.add_argument("-f", "--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seed", type=int, default=0, help="seed of the case bootstrap")
    parser.add_argument("--rounds", type=int, default=BOOTSTRAP,
                        help=f"bootstrap resamples per interval (default {BOOTSTRAP})")
    args = parser.parse_args(argv)
    try:
        dataset = resolve_dataset(args.dataset, [raw_root()])
        raw_dir = raw_root() / dataset
        for name in args.models:
            model_dir = Path(name) if Path(name).is_dir() else results_root() / dataset / name
            cases, fold_of = load_model(model_dir, raw_dir, args.folds, dataset)
            comp = held_out_components(cases, fold_of)
            print(f"\n{name}: {len(cases)} cases, folds {sorted(set(fold_of.values()))}, the rule's "
                  f"components after each fold's ADC cap, scored by filters fitted on the other folds\n")
            print(table(comp, args.seed, args.rounds))
            print("\n".join(lesion_free_lines(comp, cases)))
    except HiennuError as error:
        parser.exit(1, f"component_judgment.py: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
