"""Choosing a model's post-processing by cross-validation, as nnU-Net does.

The pooled cross-validation predictions of a trained model (every chosen fold's
``fold_K/validation/CASE<ending>``, made without post-processing) are compared with the raw labels.
Each candidate of :func:`hiennu.postprocessing.candidates.candidates` (components under k voxels
removed, for k in 5, 10, 20, 50; only components touching the rule ``ZADC < -2`` kept; and both;
an ADC cap at the 99 / 99.5 / 99.9th percentile of the ADC inside the reference lesions, alone and
with each size; and the lesion filter of :mod:`hiennu.postprocessing.lesion_filter`, fitted on the same
cases after each cap and with none) is applied to every case and scored by Dice per case on the
native grid; the candidate's score is the mean over cases. A candidate is kept only when it raises
the mean Dice above "no post-processing" (nnU-Net's rule); the best kept candidate is chosen, else
none.

``candidate_set`` "cap-filter" (``--candidates cap-filter``; :data:`hiennu.postprocessing.candidates.CAP_AND_FILTER`)
narrows the choice to one recipe against none: the ADC cap at the 99.5th percentile, then the lesion filter fitted
after it. Its parameters are still derived from the cases, but no recipe is chosen among the others, which on the
37 BONBID dev cases moved one held-out fold of the rule by 0.2 Dice (results.md, session 33).

``candidate_set`` "judged-rule" (:data:`hiennu.postprocessing.candidates.JUDGED_RULE`) is one recipe against none as
well: the rule's mask in place of the model's, the same cap, then a lesion filter whose fourth feature is the
network's mean probability over each component. It reads each validation case's probabilities (``CASE.npz``, kept
by ``hiennu_train --npz``); a case without them is an error naming the fold and the command that keeps them.

The chosen candidate's pooled score is optimistic: it is the best of about 30 tried on the same
cases, and the lesion filters are fitted on them too. :func:`nested_estimate` gives the honest number:
for each fold, the caps are derived, the filters fitted and the candidate chosen on the other folds'
cases only, then applied to the held-out fold. Both are stored, with the number of candidates each
choice was made among (``num_candidates``; per fold in ``nested.num_candidates``). Nothing derived from
a held-out fold (caps, filter fits, their thresholds and feature scaling, the choice) enters its own
estimate (``tests/test_postprocessing_package.py`` changes a held-out fold and checks its choice stays).

Every candidate goes through :func:`hiennu.postprocessing.record.with_size_rule` with the plans'
``min_component_voxels``, as the predictor applies it.

The choice and its evidence go to ``MODEL_DIR/postprocessing.json`` (atomically)::

    {"chosen": {"min_component_voxels": 10, "keep_touching_rule": false, "rule_threshold": -2.0},
     "chosen_name": "remove < 10 vox", "baseline_dice": 0.51, "chosen_dice": 0.53,
     "candidates": [{"name": ..., "min_component_voxels": ..., "keep_touching_rule": ..., "rule_threshold": ...,
                     "cv_dice": ..., "improvement": ...}, ...],
     "nested": {"cv_dice": 0.50, "choices": {"0": "remove < 10 vox", ...}},
     "folds": [0, 1, 2, 3, 4], "num_candidates": 31, "num_cases": 37, "case_ids": [...], "metric": "...", "provenance": {...}}

The ZADC image is the raw case's channel named ``ZADC`` in ``dataset.json`` (channel 1 of BONBID),
read on its atlas z-score scale; the brain is where the ``ADC`` channel is non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json, write_json
from hiennu.io.cases import channel_file_name
from hiennu.io.channels import adc_zadc_channels
from hiennu.io.checkpoint import BEST
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.image import Geometry, read_binary_mask, read_finite_image
from hiennu.io.probabilities import mean_probabilities, read_probabilities
from hiennu.log import get_logger, progress
from hiennu.masks import brain_mask, dice
from hiennu.paths import ModelFolder
from hiennu.plans import model_configuration
from hiennu.postprocessing.candidates import (ADC_CAP_QUANTILES, ALL_CANDIDATES, CAP_AND_FILTER, COMPONENT_SIZES,
                                             FIXED_CAP_QUANTILE, JUDGED_RULE, adc_cap_candidates, candidates,
                                             check_candidate_set, needs_probabilities)
from hiennu.postprocessing.lesion_filter import FEATURES, FEATURES_WITH_PROBABILITY, FilterCase, fit_component_filter
from hiennu.postprocessing.record import PostProcessing, apply_postprocessing, with_size_rule
from hiennu.provenance import provenance

log = get_logger(__name__)

METRIC = "mean over cases of the per-case Dice on the native grid (pooled validation cases of the folds)"


def validation_cases(model_dir: Path, folds: Sequence[int], labels_dir: Path,
                     ending: str) -> tuple[dict[str, Path], dict[str, int]]:
    """(case id -> validation mask, case id -> fold) over ``folds``: each case's mask from the fold that held
    it out; each must have a label."""
    model = ModelFolder(model_dir)
    masks: dict[str, Path] = {}
    fold_of: dict[str, int] = {}
    for fold in folds:
        folder = model.validation_dir(fold)
        if not model.fold_dir(fold).is_dir():
            raise HiennuError(f"fold {fold}: {model.fold_dir(fold)} not found; train it (hiennu_train) or name the "
                              f"folds that exist")
        files = sorted(p for p in folder.glob(f"*{ending}") if not p.name.startswith("."))
        if not files:
            raise HiennuError(f"fold {fold}: no validation masks (*{ending}) in {folder}; train fold {fold} to the end "
                              f"(its final validation writes them) before choosing post-processing")
        for path in files:
            case = path.name[: -len(ending)]
            if not (labels_dir / f"{case}{ending}").is_file():
                raise HiennuError(f"fold {fold}, case {case}: no label {labels_dir / (case + ending)} for this "
                                  f"validation mask; give the raw dataset the model was trained on")
            if case in masks:
                raise HiennuError(f"case {case}: validation mask in two folds ({masks[case].parent.parent.name} and "
                                  f"fold_{fold}); the folds must hold out disjoint cases")
            masks[case] = path
            fold_of[case] = int(fold)
    return masks, fold_of


@dataclass
class CaseImages:
    """One case's native arrays for scoring post-processing: prediction, reference, ZADC and ADC (z, y, x),
    its voxel spacing ``(z, y, x)`` in mm (the lesion filter measures components in mm) and, when kept, the
    network's sigmoid probabilities (float32 (z, y, x); a lesion filter that asks the network needs them)."""

    pred: np.ndarray
    ref: np.ndarray
    zadc: np.ndarray
    adc: np.ndarray | None
    spacing_zyx: tuple[float, float, float] | None = None
    probabilities: np.ndarray | None = None

    def postprocessed(self, post: PostProcessing) -> np.ndarray:
        """The prediction after ``post`` (uint8 {0, 1}, (z, y, x))."""
        return apply_postprocessing(self.pred, post, self.zadc, self.adc, self.spacing_zyx, self.probabilities)


def load_cases(masks: dict[str, Path], raw_dir: Path, fold_of: dict[str, int] | None = None,
               probabilities: dict[str, Sequence[Path]] | None = None) -> dict[str, CaseImages]:
    """Case id -> :class:`CaseImages` for the cases of ``masks`` (case id -> mask file), read from ``raw_dir``.

    Each mask and each image must lie on its label's grid (size, spacing, origin, direction); fold_of names the
    fold in errors. probabilities: case id -> the ``.npz`` files (key ``probabilities``, float32 (z, y, x) on the
    native grid, as validation keeps them) whose mean is the case's probability map (one file for a model, one
    per member for an ensemble); None reads none.
    """
    dataset = load_dataset_json(raw_dir)
    ending = dataset.file_ending
    adc_k, zadc_k = adc_zadc_channels(dataset.channel_names)
    if zadc_k is None:
        raise HiennuError(f"{raw_dir / 'dataset.json'}: no channel named ZADC among {list(dataset.channel_names)}; "
                          f"the rule candidate needs it")
    out: dict[str, CaseImages] = {}
    for case, path in progress(sorted(masks.items()), desc="post-processing candidates"):
        where = f"fold {fold_of[case]}, case {case}" if fold_of and case in fold_of else f"case {case}"
        pred, pred_geometry = read_binary_mask(path, f"{where}: validation mask")
        label = raw_dir / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            raise HiennuError(f"{where}: no label {label} for the mask {path}; give the raw dataset (-d, or its "
                              f"labelsTr with -ref) the masks were predicted for, or move the mask away")
        ref, geometry = read_binary_mask(label, f"{where}: label")
        diffs = geometry.differences(pred_geometry)
        if pred.shape != ref.shape or diffs:
            raise HiennuError(f"{where}: validation mask {path} lies on another grid than its label "
                              f"({'; '.join(diffs) or f'shape {pred.shape} vs {ref.shape}'}); validation masks must be "
                              f"in the label's native geometry")
        images = {}
        for role, k in (("ZADC", zadc_k), ("ADC", adc_k)):
            if k is None:
                continue
            file = raw_dir / "imagesTr" / channel_file_name(case, k, ending)
            if not file.is_file():
                raise HiennuError(f"{where}: {role} image {file} not found")
            image, image_geometry = read_finite_image(file, f"{where}: {role} image")
            image_diffs = geometry.differences(image_geometry)
            if image.shape != ref.shape or image_diffs:
                raise HiennuError(f"{where}: {role} image {file} lies on another grid than its label "
                                  f"({'; '.join(image_diffs) or f'shape {image.shape} vs {ref.shape}'}); every "
                                  f"channel of a case must share its label's grid")
            images[role] = image
        prob = None if probabilities is None else case_probabilities(probabilities[case], geometry, where)
        out[case] = CaseImages(pred, ref != 0, images["ZADC"], images.get("ADC"),
                               tuple(float(v) for v in geometry.spacing_zyx), prob)
    return out


def case_probabilities(files: Sequence[Path], geometry: Geometry, where: str) -> np.ndarray:
    """The mean of the probability maps in ``files`` (``.npz``, :func:`hiennu.io.probabilities.read_probabilities`:
    each on the label's grid ``geometry``, values in [0, 1]); a missing file is an error naming ``where`` and the
    command that keeps them."""
    if not files:
        raise HiennuError(f"{where}: no probabilities given; keep them with hiennu_train ... --npz")
    maps = []
    for file in files:
        if not Path(file).is_file():
            raise HiennuError(f"{where}: probabilities {file} not found; keep them with hiennu_train ... --npz "
                              f"(--val --npz redoes only the validation)")
        maps.append(read_probabilities(Path(file), geometry, where))
    return maps[0] if len(maps) == 1 else mean_probabilities(maps)


def caps_from(cases: dict[str, CaseImages], case_ids: Sequence[str],
              quantiles: Sequence[float] = ADC_CAP_QUANTILES) -> list[float]:
    """ADC cap candidates, the ``quantiles`` of the lesion voxels' ADC of ``case_ids`` (none without an ADC
    channel)."""
    values = [cases[c].adc[cases[c].ref] for c in case_ids if cases[c].adc is not None]
    return adc_cap_candidates(np.concatenate(values), quantiles) if values else []


def filter_candidates(cases: dict[str, CaseImages], case_ids: Sequence[str], caps: Sequence[float],
                      min_component_voxels: int = 0, uncapped: bool = True,
                      judged_rule: bool = False) -> list[PostProcessing]:
    """The lesion filter fitted on ``case_ids`` after no cap (unless ``uncapped`` is False) and after each of
    ``caps``: one candidate per cap whose components are not all of one kind; none without an ADC channel (the
    filter needs the brain).

    Each filter is fitted on the masks as they reach it at prediction: capped, then without the components
    under ``min_component_voxels`` (the plans' size rule, which the predictor applies before the filter), and
    the candidate carries that size, so fitting and applying see the same components.

    judged_rule: each filter is fitted on the rule's mask in place of the model's (``start_from_rule``) with the
    network's mean probability as a fourth feature (every case needs its probabilities).
    """
    out = []
    features = FEATURES_WITH_PROBABILITY if judged_rule else FEATURES
    for cap in [None, *caps] if uncapped else list(caps):
        before = PostProcessing(min_component_voxels=int(min_component_voxels), max_adc=cap,
                                start_from_rule=judged_rule)
        fit_cases = []
        for c in case_ids:
            case = cases[c]
            if case.adc is None:
                return []
            fit_cases.append(FilterCase(case.postprocessed(before), brain_mask(case.adc), case.ref, case.spacing_zyx,
                                        case.probabilities))
        fitted = fit_component_filter(fit_cases, features=features)
        if fitted is not None:
            out.append(replace(before, component_filter=fitted))
    return out


def with_size_floor(options: list[PostProcessing], min_component_voxels: int) -> list[PostProcessing]:
    """``options`` as the predictor applies them: each removes at least the components under
    ``min_component_voxels`` (the plans' size rule), except ``options[0]``, the masks as they are (the
    cross-validation masks were predicted with that rule already)."""
    return options[:1] + [with_size_rule(p, min_component_voxels) for p in options[1:]]


def all_candidates(cases: dict[str, CaseImages], case_ids: Sequence[str],
                   sizes: Sequence[int] = COMPONENT_SIZES, min_component_voxels: int = 0,
                   candidate_set: str = ALL_CANDIDATES) -> list[PostProcessing]:
    """Every candidate for a choice made on ``case_ids``, "no post-processing" first.

    With ``candidate_set`` :data:`~hiennu.postprocessing.candidates.ALL_CANDIDATES`: the fixed ones with the caps
    of their lesions (:func:`hiennu.postprocessing.candidates.candidates`), then the lesion filters fitted on them.
    With :data:`~hiennu.postprocessing.candidates.CAP_AND_FILTER`: only the ADC cap at the
    :data:`~hiennu.postprocessing.candidates.FIXED_CAP_QUANTILE` quantile of their lesions' ADC followed by the
    lesion filter fitted after it (the cap alone when no filter can be fitted: components all of one kind; nothing
    without lesion voxels or an ADC channel). With :data:`~hiennu.postprocessing.candidates.JUDGED_RULE`: the same
    on the rule's mask, the filter asking the network (every case must carry its probabilities). Each with at least
    the plans' size rule ``min_component_voxels`` (:func:`with_size_floor`).
    """
    if check_candidate_set(candidate_set) in (CAP_AND_FILTER, JUDGED_RULE):
        judged = candidate_set == JUDGED_RULE
        if judged:
            missing = [c for c in case_ids if cases[c].probabilities is None]
            if missing:
                raise HiennuError(f"post-processing candidates {JUDGED_RULE} need each case's network probabilities; "
                                  f"case(s) {', '.join(missing[:3])} have none; keep them with hiennu_train ... --npz")
        caps = caps_from(cases, case_ids, (FIXED_CAP_QUANTILE,))
        if not caps:
            return [PostProcessing()]
        recipe = filter_candidates(cases, case_ids, caps, min_component_voxels, uncapped=False, judged_rule=judged)
        fallback = PostProcessing(max_adc=caps[0], start_from_rule=judged)
        return [PostProcessing()] + (recipe or [with_size_rule(fallback, min_component_voxels)])
    caps = caps_from(cases, case_ids)
    fixed = with_size_floor(candidates(sizes, caps), min_component_voxels)
    return fixed + filter_candidates(cases, case_ids, caps, min_component_voxels)


def score(cases: dict[str, CaseImages], options: list[PostProcessing]) -> np.ndarray:
    """Dice array ``(candidates, cases)``, cases in sorted id order."""
    ids = sorted(cases)
    scores = np.zeros((len(options), len(ids)), dtype=np.float64)
    for j, case in enumerate(ids):
        c = cases[case]
        for i, post in enumerate(options):
            scores[i, j] = dice(c.ref, c.postprocessed(post) != 0)
    return scores


@dataclass
class FoldChoice:
    """A fold's nested choice: the candidates built on the other folds' cases only (caps, filter fits), the
    one chosen on them, and the fold's own (held-out) cases it is applied to."""

    options: list[PostProcessing]
    chosen: PostProcessing
    held_out: list[str]


def nested_choices(cases: dict[str, CaseImages], fold_of: dict[str, int], sizes: Sequence[int] = COMPONENT_SIZES,
                   min_component_voxels: int = 0, within: Sequence[int] | None = None,
                   made: dict[frozenset, tuple[list[PostProcessing], PostProcessing]] | None = None,
                   candidate_set: str = ALL_CANDIDATES) -> dict[int, FoldChoice]:
    """Fold -> :class:`FoldChoice`: for each fold, caps from the other folds' lesions, lesion filters fitted on
    the other folds' cases, candidates scored on them and one picked there by :func:`choose`; the fold's own cases are
    never read for it. With a single fold there is nothing to choose on: the fold keeps no post-processing.

    within: the folds that take part (default: every fold of the cases). The cases of the other folds are neither
    chosen on nor scored, so this is the nested choice a run given only those folds would make; the fully nested
    estimate of ``hiennu_find_best_configuration --nested-choice`` (:mod:`hiennu.ensembling.nested_choice`) runs it
    once without each fold. made: choices already made, keyed by the folds they were made on (a frozenset), read
    and filled in, so that the same choice asked for twice is made once (fold j without fold k is chosen on the
    same folds as fold k without fold j); it must only ever see calls with the same cases, fold_of, sizes,
    min_component_voxels and candidate_set (:func:`all_candidates`).
    """
    ids = sorted(c for c in cases if within is None or fold_of[c] in within)
    made = {} if made is None else made
    out: dict[int, FoldChoice] = {}
    for fold in sorted(set(fold_of[c] for c in ids)):
        held = [c for c in ids if fold_of[c] == fold]
        rest = [c for c in ids if fold_of[c] != fold]
        if rest:
            key = frozenset(fold_of[c] for c in rest)
            if key not in made:
                seen = {c: cases[c] for c in rest}
                options = all_candidates(seen, rest, sizes, min_component_voxels, candidate_set)
                made[key] = (options, options[choose(options, list(score(seen, options).mean(axis=1)))])
            options, chosen = made[key]
        else:
            options, chosen = [PostProcessing()], PostProcessing()
        out[fold] = FoldChoice(options, chosen, held)
    return out


def nested_estimate(cases: dict[str, CaseImages], fold_of: dict[str, int], sizes: Sequence[int] = COMPONENT_SIZES,
                    min_component_voxels: int = 0, within: Sequence[int] | None = None,
                    made: dict[frozenset, tuple[list[PostProcessing], PostProcessing]] | None = None,
                    candidate_set: str = ALL_CANDIDATES) -> tuple[dict[str, float], dict[int, PostProcessing]]:
    """Per-case Dice of post-processing chosen without the case's own fold (:func:`nested_choices`; within, made and
    candidate_set as there: only the cases of the folds ``within`` are chosen on and scored), and each fold's
    choice."""
    folds = nested_choices(cases, fold_of, sizes, min_component_voxels, within, made, candidate_set)
    per_case = {c: float(score({c: cases[c]}, [f.chosen])[0, 0]) for f in folds.values() for c in f.held_out}
    return per_case, {fold: f.chosen for fold, f in folds.items()}


def choose(options: list[PostProcessing], mean_dice: Sequence[float]) -> int:
    """Index of the chosen candidate: the best one whose mean Dice beats the identity's, else the identity.

    ``options[0]`` must be the identity (no post-processing); ties keep the simpler, earlier candidate. There must be one score per candidate.
    """
    if not options or not options[0].is_identity:
        raise ValueError("the first candidate must be 'no post-processing'")
    if len(mean_dice) != len(options):
        raise ValueError(f"choose: {len(mean_dice)} score(s) for {len(options)} candidate(s); score every "
                         f"candidate once, in the candidates' order")
    if not all(np.isfinite(v) for v in mean_dice):
        raise ValueError(f"choose: the scores must be finite numbers, got {list(mean_dice)}")
    best = 0
    for i, value in enumerate(mean_dice):
        if value > mean_dice[best]:
            best = i
    return best


def select_postprocessing(model_dir: str | Path, raw_dir: str | Path, folds: Sequence[int],
                          sizes: Sequence[int] = COMPONENT_SIZES, write: bool = True,
                          details: dict | None = None, candidate_set: str = ALL_CANDIDATES,
                          with_probabilities: bool = False) -> dict:
    """Choose ``model_dir``'s post-processing on the pooled validation masks of ``folds``; return the record.

    model_dir: ``TRAINER__PLANS__CONFIG/``; raw_dir: the raw dataset (``dataset.json``,
    ``imagesTr/``, ``labelsTr/``); folds: the folds whose held-out cases are pooled (normally all
    five). With ``write`` the record is written to ``model_dir/postprocessing.json`` (atomically), only
    after every check and computation passed. details: when given, filled with what the record summarizes
    (``cases``, ``fold_of``, ``options``, ``nested``: :func:`nested_choices`), for tables. candidate_set: which
    candidates the choice is made among (:func:`all_candidates`). with_probabilities: read the folds' validation
    probabilities into the cases even when the candidates do not ask for them (a record already in force that asks
    the network is scored on the same cases).
    """
    model_dir, raw_dir = Path(model_dir), Path(raw_dir)
    folds = sorted(set(int(f) for f in folds))  # -f 0 0 1 is folds 0 and 1, as hiennu_find_best_configuration takes it
    if not folds:
        raise HiennuError("choosing post-processing needs at least one fold")
    ending = load_dataset_json(raw_dir).file_ending
    masks, fold_of = validation_cases(model_dir, folds, raw_dir / "labelsTr", ending)
    probabilities = ({c: [ModelFolder(model_dir).validation_probabilities(fold_of[c], c)] for c in masks}
                     if needs_probabilities(candidate_set) or with_probabilities else None)
    record = select_on_masks(masks, fold_of, raw_dir, plans_size_rule(model_dir),
                             validation_checkpoints(model_dir, folds), model_dir, sizes, details, candidate_set,
                             probabilities)
    record["validation_windows"] = validation_windows(model_dir, folds)
    if write:
        write_json(record, ModelFolder(model_dir).postprocessing)
    return record


def select_on_masks(masks: dict[str, Path], fold_of: dict[str, int], raw_dir: Path, size_rule: int,
                    checkpoints: dict[str, str | None], source: Path, sizes: Sequence[int] = COMPONENT_SIZES,
                    details: dict | None = None, candidate_set: str = ALL_CANDIDATES,
                    probabilities: dict[str, Sequence[Path]] | None = None) -> dict:
    """The post-processing record chosen on cross-validation masks given file by file (nothing is written).

    masks: case id -> mask on its label's grid (made without post-processing); fold_of: case id -> the fold
    that held it out; raw_dir: the raw dataset; size_rule: the components the predictor removes before any
    chosen post-processing (the plans' ``min_component_voxels``); checkpoints: fold -> the checkpoint that
    predicted its masks (recorded as ``validation_checkpoints``); source: the folder the masks belong to
    (a model folder, or an ensemble folder of ``hiennu_find_best_configuration``), for the log and provenance;
    candidate_set: which candidates the choice is made among (:func:`all_candidates`); probabilities: case id ->
    the ``.npz`` files whose mean is its probability map (:func:`load_cases`), needed by ``judged-rule``.
    """
    if needs_probabilities(candidate_set) and probabilities is None:
        raise HiennuError(f"{source.name}: post-processing candidates {candidate_set} need the cases' network "
                          f"probabilities, and none were given")
    cases = load_cases(masks, Path(raw_dir), fold_of, probabilities)
    return select_on_cases(cases, fold_of, raw_dir, size_rule, checkpoints, source, sizes, details, candidate_set)


def select_on_cases(cases: dict[str, CaseImages], fold_of: dict[str, int], raw_dir: Path, size_rule: int,
                    checkpoints: dict[str, str | None], source: Path, sizes: Sequence[int] = COMPONENT_SIZES,
                    details: dict | None = None, candidate_set: str = ALL_CANDIDATES) -> dict:
    """:func:`select_on_masks` on cases already read (:func:`load_cases`), so that masks made in memory (the rule
    ``ZADC < -2``'s, :mod:`hiennu.postprocessing.rule_reference`) get the very same choice as a model's."""
    raw_dir, source = Path(raw_dir), Path(source)
    folds = sorted(set(fold_of.values()))
    options = all_candidates(cases, list(cases), sizes, size_rule, candidate_set)
    if candidate_set == CAP_AND_FILTER and len(options) == 1:
        log.warning("%s: --candidates cap-filter has no recipe to offer (no ADC channel, or no lesion voxel to derive "
                    "the cap from), so no post-processing can be chosen; --candidates all also tries component sizes "
                    "and the rule", source.name)
    means = score(cases, options).mean(axis=1)
    folds_chosen = nested_choices(cases, fold_of, sizes, size_rule, candidate_set=candidate_set)
    nested = {c: float(score({c: cases[c]}, [f.chosen])[0, 0]) for f in folds_chosen.values() for c in f.held_out}
    fold_choices = {fold: f.chosen for fold, f in folds_chosen.items()}
    best = choose(options, list(means))
    chosen = options[best]
    record = {
        "chosen": chosen.to_dict(),
        "chosen_name": chosen.name,
        "baseline_dice": float(means[0]),
        "chosen_dice": float(means[best]),
        "num_candidates": len(options),
        "candidate_set": candidate_set,
        "candidates": [{"name": p.name, **p.to_dict(), "cv_dice": float(m), "improvement": float(m - means[0])}
                       for p, m in zip(options, means)],
        "nested": {"cv_dice": float(np.mean(list(nested.values()))),
                   "choices": {str(f): p.name for f, p in fold_choices.items()},
                   "chosen_per_fold": {str(f): p.to_dict() for f, p in fold_choices.items()},
                   "num_candidates": {str(f): len(c.options) for f, c in folds_chosen.items()},
                   "per_case_dice": {c: nested[c] for c in sorted(nested)},
                   "how": "each fold's choice made on the other folds' cases only (caps and lesion filters "
                          "included), applied to it"},
        "folds": folds,
        "validation_checkpoints": checkpoints,
        "plans_min_component_voxels": size_rule,
        "num_cases": len(cases),
        "case_ids": sorted(cases),
        "metric": METRIC,
        "rule": "a candidate is kept only when it raises the mean Dice above no post-processing; the best kept wins",
        "provenance": provenance({"model_dir": str(source), "raw_dir": str(raw_dir), "folds": folds,
                                  "sizes": [int(k) for k in sizes], "candidate_set": candidate_set}),
    }
    log.info("%s: post-processing chosen by CV over %d cases of folds %s among %d candidates: %s (mean Dice %.4f, "
             "without %.4f; nested estimate %.4f)", source.name, len(cases), ", ".join(map(str, folds)),
             len(options), chosen.name, means[best], means[0], record["nested"]["cv_dice"])
    if details is not None:
        details.update(cases=cases, fold_of=fold_of, options=options, nested=folds_chosen)
    return record


def plans_size_rule(model_dir: Path) -> int:
    """The plans' ``min_component_voxels`` of the model folder's configuration (what the predictor removes
    before any chosen post-processing); 0 for a folder of validation masks without ``plans.json``."""
    config = model_configuration(model_dir)
    return 0 if config is None else int(config.min_component_voxels)


def validation_checkpoints(model_dir: Path, folds: Sequence[int]) -> dict[str, str | None]:
    """Fold -> the checkpoint file its validation masks were predicted with (``validation/summary.json``'s
    ``checkpoint``; ``checkpoint_best.pth`` for summaries written before it was recorded; None without one)."""
    out: dict[str, str | None] = {}
    for fold in folds:
        path = ModelFolder(model_dir).validation_summary(fold)
        out[str(fold)] = read_json(path).get("checkpoint", BEST) if path.is_file() else None
    return out


def validation_windows(model_dir: Path, folds: Sequence[int]) -> dict[str, str]:
    """Fold -> the sliding window (``inference_window``) its validation masks were predicted with, as each fold's
    ``validation/summary.json`` records it (``"patch"`` for summaries written before it was recorded, and for a
    fold without one). A model's record keeps these: one chosen on masks of another window than the folds' now
    was chosen on predictions the model no longer makes (:func:`record_windows`)."""
    out: dict[str, str] = {}
    for fold in folds:
        path = ModelFolder(model_dir).validation_summary(fold)
        out[str(fold)] = str(read_json(path).get("inference_window", "patch")) if path.is_file() else "patch"
    return out


def record_windows(record: dict) -> dict[str, str]:
    """Fold -> the window of the validation masks a post-processing record was chosen on (``"patch"`` for each of
    its folds when it predates :func:`validation_windows`)."""
    recorded = record.get("validation_windows")
    if isinstance(recorded, dict):
        return {str(k): str(v) for k, v in recorded.items()}
    return {str(f): "patch" for f in record.get("folds") or []}


def postprocessing_table(records: dict[str, dict]) -> str:
    """Markdown table: one row per model (trainer), one column per candidate's CV Dice, then the choice and the
    nested estimate (each fold's choice made without it)."""
    if not records:
        return ""
    names = [c["name"] for c in next(iter(records.values()))["candidates"]]
    header = ["method", "cases"] + names + ["chosen", "nested CV Dice"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for method, rec in records.items():
        by_name = {c["name"]: c["cv_dice"] for c in rec["candidates"]}
        cells = [method, str(rec["num_cases"])] + [f"{by_name[n]:.4f}" if n in by_name else "" for n in names]
        nested = rec.get("nested", {}).get("cv_dice")
        lines.append("| " + " | ".join(cells + [rec["chosen_name"], "" if nested is None else f"{nested:.4f}"]) + " |")
    return "\n".join(lines) + "\n"
