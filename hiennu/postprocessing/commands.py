"""What ``hiennu_determine_postprocessing`` and ``hiennu_apply_postprocessing`` do (the CLI only parses).

:func:`determine_postprocessing` chooses a trained model's post-processing on the cross-validation masks
of its folds, exactly as the loss study does (:func:`hiennu.postprocessing.selection.select_postprocessing`,
so the two write the same ``postprocessing.json``), after checking that the folds exist and were trained
with the model folder's plans; :func:`determine_rule_postprocessing` chooses the rule ``ZADC < -2``'s own, on its
masks over the same folds; :func:`candidate_table` scores every candidate with Dice, MASD and NSD,
pooled and nested. :func:`apply_to_folder` applies a record to masks already predicted.

Bad input (a fold missing or trained with other plans, a validation mask missing or on another grid, a
record with unknown fields, wrong types or NaN numbers, the images a record needs missing) is one
:class:`~hiennu.errors.HiennuError` line naming the fold, case or field, raised before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.evaluation.metrics import case_metrics
from hiennu.io.atomic import read_json, write_json
from hiennu.io.checkpoint import BEST, stale_validation_problem
from hiennu.io.folders import AROUND, INSIDE, IS, folder_relation, refuse_raw_data_output
from hiennu.io.cases import channel_file_name
from hiennu.io.channels import adc_zadc_channels
from hiennu.io.dataset_json import BONBID_CHANNELS, load_dataset_json
from hiennu.io.image import (Geometry, image_ending, is_probability_image, read_binary_mask, read_finite_image,
                             strip_ending, write_image)
from hiennu.io.probabilities import read_probabilities
from hiennu.log import get_logger, progress
from hiennu.paths import (DATASET_FILE, POSTPROCESSING_FILE, RETRAIN, RULE_DIR, VALIDATE, ModelFolder, model_dir_name,
                          raw_root, resolve_dataset, results_root, split_seed_folder, train_command)
from hiennu.plans import PLANS_NAME, PREDICTOR_IGNORED_FIELDS, configuration_differences, load_plans
from hiennu.postprocessing.candidates import (ALL_CANDIDATES, COMPONENT_SIZES, needs_probabilities,
                                             rule_candidate_set)
from hiennu.postprocessing.record import PostProcessing, apply_postprocessing, load_record_file
from hiennu.postprocessing.rule_reference import load_rule_cases
from hiennu.postprocessing.rule_folder import write_rule_folder
from hiennu.postprocessing.selection import CaseImages, select_on_cases, select_postprocessing

log = get_logger(__name__)

DEFAULT_FOLDS = (0, 1, 2, 3, 4)
TABLE_METRICS = ("dice", "masd", "nsd")


def find_model_folder(dataset: str | int, trainer: str, configuration: str | None = None,
                      plans_name: str = PLANS_NAME, split_seed: int | None = None) -> Path:
    """``$hiennu_results/DatasetNNN_Name/[split_seed_S/]TRAINER__PLANS__CONFIG``; without ``configuration``, the
    only one of that trainer and plans."""
    root = results_root() / resolve_dataset(dataset, [results_root()])
    if split_seed is not None:
        root = root / split_seed_folder(split_seed)
    if configuration is not None:
        path = root / model_dir_name(trainer, plans_name, configuration)
        if not path.is_dir():
            raise HiennuError(f"model folder {path} not found; train its folds with hiennu_train first")
        return path
    found = sorted(p for p in root.glob(model_dir_name(trainer, plans_name, "*")) if p.is_dir())
    if len(found) != 1:
        raise HiennuError(f"{'no' if not found else len(found)} model folder(s) of {trainer} with plans {plans_name} "
                          f"under {root}{': ' + ', '.join(p.name for p in found) if found else ''}; "
                          f"name the configuration with -c")
    return found[0]


def check_folds(model_dir: Path, folds: Sequence[int], validation: bool = True) -> None:
    """Each fold's folder exists and its ``fold_K/plans.json`` (when kept) describes the model folder's
    configuration (fields the predictor ignores aside); with ``validation``, its validation masks are those of its
    checkpoint now (:func:`~hiennu.io.checkpoint.stale_validation_problem`); raises naming the fold and field."""
    model = ModelFolder(model_dir)
    if not model.plans.is_file():
        raise HiennuError(f"{model.plans}: missing; {model_dir} is not a trained model folder")
    parts = model.name
    config = load_plans(model.plans).configuration(parts.configuration if parts else None)
    for fold in folds:
        if not model.fold_dir(fold).is_dir():
            raise HiennuError(f"fold {fold}: {model.fold_dir(fold)} not found; train it (hiennu_train) or choose "
                              f"with the folds that exist (-f)")
        if model.fold_plans(fold).is_file():
            fold_config = load_plans(model.fold_plans(fold)).configuration(config.name)
            diffs = configuration_differences(dataclasses.asdict(fold_config), config, ignore=PREDICTOR_IGNORED_FIELDS)
            if diffs:
                raise HiennuError(f"fold {fold}: trained with other plans than {model.plans} ({'; '.join(diffs)}); "
                                  f"retrain it: {train_command(model_dir, fold, RETRAIN)}, or leave it out with -f")
        if validation and model.validation_summary(fold).is_file():
            stale = stale_validation_problem(model.fold_dir(fold), model.validation_summary(fold),
                                             config.inference_window if config.is_patch_based else None)
            if stale:
                raise HiennuError(f"fold {fold}: {stale}; re-validate it: {_revalidate_command(model, fold)}, "
                                  f"or leave it out with -f")


def _revalidate_command(model: ModelFolder, fold: int) -> str:
    """The fold validated again with the checkpoint its summary records."""
    best = read_json(model.validation_summary(fold)).get("checkpoint") == BEST
    return train_command(model.path, fold, VALIDATE, npz=False, best=best)


def determine_postprocessing(model_dir: str | Path, raw_dir: str | Path, folds: Sequence[int] = DEFAULT_FOLDS,
                             sizes: Sequence[int] = COMPONENT_SIZES, write: bool = True,
                             table: bool = True, candidate_set: str = ALL_CANDIDATES) -> tuple[dict, str]:
    """Choose and (with ``write``) store ``model_dir``'s post-processing among the candidates of ``candidate_set``
    (:func:`hiennu.postprocessing.selection.all_candidates`); return the record and, with ``table``, the Markdown
    table of every candidate (:func:`candidate_table`)."""
    model_dir, raw_dir = Path(model_dir), Path(raw_dir)
    folds = sorted(set(int(f) for f in folds))
    check_folds(model_dir, folds)
    if not (raw_dir / DATASET_FILE).is_file():
        raise HiennuError(f"{raw_dir}: no {DATASET_FILE}; give the raw dataset the model was trained on")
    details: dict = {}
    record = select_postprocessing(model_dir, raw_dir, folds, sizes, write=False, details=details,
                                   candidate_set=candidate_set)
    text = candidate_table(record, details) if table else ""
    if write:
        write_json(record, ModelFolder(model_dir).postprocessing)
    return record, text


def determine_rule_postprocessing(dataset: str, fold_cases: Mapping[int, Sequence[str]], write: bool = True,
                                  table: bool = True, candidate_set: str = ALL_CANDIDATES) -> tuple[dict, str, Path]:
    """Choose the rule ``ZADC < -2``'s own post-processing on its masks over the folds ``fold_cases`` (fold -> its
    held-out cases, those of the dataset's ``splits_final.json``; :mod:`hiennu.postprocessing.rule_reference`, the
    reference row of ``hiennu_find_best_configuration``), and with ``write`` store it in the rule folder
    ``$hiennu_results/DatasetNNN_Name/baseline_zadc/`` (:mod:`hiennu.postprocessing.rule_folder`: ``postprocessing.json``
    beside the dataset's ``dataset.json`` and ``rule.json``), which ``hiennu_predict -m FOLDER`` predicts with, as does
    ``hiennu_predict --baseline zadc --postprocessing FOLDER/postprocessing.json``. dataset: the ``DatasetNNN_Name``
    folder. Returns the record, the table of every candidate (with ``table``) and the ``postprocessing.json`` path."""
    if needs_probabilities(candidate_set):
        raise HiennuError(f"--candidates {candidate_set} asks a network about the rule's components, and the rule alone "
                          f"has none; choose the rule's post-processing with --candidates "
                          f"{rule_candidate_set(candidate_set)} (the same recipe without the network)")
    raw_dir = raw_root() / dataset
    if not (raw_dir / DATASET_FILE).is_file():
        raise HiennuError(f"{raw_dir}: no {DATASET_FILE}; convert or stage the raw dataset first")
    fold_of = {str(case): int(f) for f, cases in fold_cases.items() for case in cases}
    cases = load_rule_cases(raw_dir, sorted(fold_of), fold_of)
    details: dict = {}
    record = select_on_cases(cases, fold_of, raw_dir, 0, {}, Path(RULE_DIR), details=details,
                             candidate_set=candidate_set)
    path = results_root() / dataset / RULE_DIR / POSTPROCESSING_FILE
    text = candidate_table(record, details) if table else ""
    if write:
        write_rule_folder(path.parent, load_dataset_json(raw_dir), record)
    return record, text, path


def _recipe(post: PostProcessing, caps: Sequence[float]) -> str:
    """A candidate's name with its ADC cap replaced by the cap's rank among ``caps`` and the lesion filter's
    fitted numbers left out: what a candidate is across folds whose caps and filters were derived apart."""
    name = post.name
    if post.max_adc is not None:
        rank = sorted(caps).index(post.max_adc) + 1 if post.max_adc in caps else 0
        name = re.sub(r"ADC <= [^ ]+", f"ADC cap {rank}/{len(caps)}", name)
    return name


def _caps(options: Sequence[PostProcessing]) -> list[float]:
    return sorted({p.max_adc for p in options if p.max_adc is not None})


def _metrics(case: CaseImages, post: PostProcessing) -> dict[str, float]:
    m = case_metrics(case.ref, case.postprocessed(post), case.spacing_zyx)
    return {k: float(m[k]) for k in TABLE_METRICS}


def _mean(rows: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if not math.isnan(r[key])]
    return float(np.mean(values)) if values else math.nan


def candidate_table(record: dict, details: dict) -> str:
    """Markdown: one row per candidate, mean Dice, MASD (mm; defined cases) and NSD pooled over every case, and
    nested (the candidate's caps and lesion filter derived on the other folds, applied to each held-out fold;
    blank where a fold has no such candidate), then the chosen candidate and the nested choice."""
    cases: dict[str, CaseImages] = details["cases"]
    options: list[PostProcessing] = details["options"]
    nested = details["nested"]
    ids = sorted(cases)
    pooled = [[_metrics(cases[c], post) for c in ids] for post in progress(options, desc="candidate table")]
    caps = _caps(options)
    nested_rows: dict[str, list[dict[str, float]]] = {}
    complete: set[str] | None = None
    for fold_choice in nested.values():
        fold_caps = _caps(fold_choice.options)
        keys = set()
        for post in fold_choice.options:
            key = _recipe(post, fold_caps)
            keys.add(key)
            nested_rows.setdefault(key, []).extend(_metrics(cases[c], post) for c in fold_choice.held_out)
        complete = keys if complete is None else complete & keys
    chosen_nested = [_metrics(cases[c], f.chosen) for f in nested.values() for c in f.held_out]

    def cells(rows: list[dict[str, float]] | None) -> list[str]:
        if rows is None:
            return ["", "", ""]
        return [f"{_mean(rows, 'dice'):.4f}", f"{_mean(rows, 'masd'):.2f}", f"{_mean(rows, 'nsd'):.4f}"]

    header = ["candidate", "pooled Dice", "pooled MASD (mm)", "pooled NSD", "nested Dice", "nested MASD (mm)",
              "nested NSD"]
    lines = [f"Post-processing candidates of {len(ids)} cross-validation cases (folds "
             f"{', '.join(map(str, record['folds']))}); chosen among {record['num_candidates']}: "
             f"{record['chosen_name']}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for post, rows in zip(options, pooled):
        key = _recipe(post, caps)
        lines.append("| " + " | ".join([post.name] + cells(rows)
                                       + cells(nested_rows[key] if complete and key in complete else None)) + " |")
    lines.append("| " + " | ".join([f"**chosen: {record['chosen_name']}**"]
                                   + cells(pooled[[p.name for p in options].index(record["chosen_name"])])
                                   + cells(chosen_nested)) + " |")
    lines += ["", "Pooled: every candidate derived and scored on all cases (the chosen one's pooled score flatters "
              "it); nested: each fold's caps, lesion filters and choice made on the other folds only. The last row's "
              "nested numbers are the honest estimate of the chosen post-processing (nested Dice "
              f"{record['nested']['cv_dice']:.4f})."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ applying

def _images_channels(images_dir: Path) -> tuple[int | None, int | None]:
    """(ADC, ZADC) channel numbers of ``images_dir``'s ``CASE_NNNN`` files: from a ``dataset.json`` in it or
    beside it, else BONBID's order."""
    for folder in (images_dir, images_dir.parent):
        if (folder / DATASET_FILE).is_file():
            return adc_zadc_channels(load_dataset_json(folder).channel_names)
    return adc_zadc_channels(BONBID_CHANNELS)


def _check_apart(out_dir: Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output folder that is an input folder, lies inside one or holds one: no input is overwritten
    and no mask lands among a dataset's channels."""
    for option, folder in inputs.items():
        relation = folder_relation(out_dir, folder) if folder is not None else None
        if relation is not None:
            where = {IS: "is", INSIDE: "lies inside", AROUND: "holds"}[relation]
            raise HiennuError(f"-o {out_dir} {where} the {option} folder {folder}; choose an output folder apart "
                              f"from every input so no input can be overwritten")
    refuse_raw_data_output("-o", out_dir)


def apply_to_folder(masks_dir: str | Path, out_dir: str | Path, record_path: str | Path,
                    images_dir: str | Path | None = None, probabilities_dir: str | Path | None = None) -> list[str]:
    """Apply the record ``record_path`` (a ``postprocessing.json``) to every mask ``CASE.<ending>`` of
    ``masks_dir``; write ``out_dir/CASE.<ending>`` with the mask's geometry. Returns the case ids.

    images_dir: the cases' raw channels (``CASE_0000``, ``CASE_0001`` ..., ADC and ZADC found by their names in
    a ``dataset.json`` of the folder or its parent, else BONBID's order), needed when the record reads images
    (ADC cap, rule, lesion filter). probabilities_dir: the network's probabilities of each case, ``CASE_prob.npz``
    (``hiennu_predict --save-probabilities npz``) or ``CASE.npz`` (``hiennu_train --npz``'s validation), on the mask's
    grid; needed when the record's lesion filter asks the network (``judged-rule``). Every input is read and checked
    before the first output is written.
    """
    masks_dir, out_dir = Path(masks_dir), Path(out_dir)
    post = load_record_file(record_path)
    if post.needs_probabilities and probabilities_dir is None:
        raise HiennuError(f"{record_path}: its post-processing ({post.name}) asks the network's probabilities about "
                          f"each component; give them with --probabilities DIR (CASE_prob.npz, as hiennu_predict "
                          f"--save-probabilities npz writes them), or predict with the model, which applies it itself")
    _check_apart(out_dir, {"-i": masks_dir, "--images": images_dir, "--probabilities": probabilities_dir})
    files = list(folder_masks(masks_dir).values())
    adc_k = zadc_k = None
    if post.needs_images:
        if images_dir is None:
            raise HiennuError(f"{record_path}: its post-processing ({post.name}) reads the cases' images; give them "
                              f"with --images DIR")
        images_dir = Path(images_dir)
        adc_k, zadc_k = _images_channels(images_dir)
        if post.needs_adc and adc_k is None or post.needs_zadc and zadc_k is None:
            raise HiennuError(f"{images_dir}: no ADC or ZADC channel named in its dataset.json, and the "
                              f"post-processing ({post.name}) needs them")
    results = []
    for path in progress(files, desc="post-processing"):
        ending = image_ending(path)
        case = path.name[: -len(ending)]
        mask, geometry = read_binary_mask(path, f"case {case}:")
        channels = {}
        for role, k in (("ADC", adc_k), ("ZADC", zadc_k)):
            if k is None:
                continue
            file = next((images_dir / channel_file_name(case, k, e) for e in (ending, ".mha", ".nii.gz")
                         if (images_dir / channel_file_name(case, k, e)).is_file()), None)
            if file is None:
                raise HiennuError(f"case {case}: no {role} image {channel_file_name(case, k, ending)} in {images_dir}; "
                                  f"the post-processing ({post.name}) needs it")
            image, image_geometry = read_finite_image(file, f"case {case}: {role} image")
            diffs = geometry.differences(image_geometry)
            if diffs:
                raise HiennuError(f"case {case}: {file.name} lies on another grid than the mask ({'; '.join(diffs)})")
            channels[role] = image
        prob = _case_probabilities(Path(probabilities_dir), case, geometry) if post.needs_probabilities else None
        out = apply_postprocessing(mask, post, channels.get("ZADC"), channels.get("ADC"), geometry.spacing_zyx, prob)
        results.append((out_dir / path.name, out, geometry))
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, out, geometry in results:
        write_image(out, geometry, target)
    log.info("%s applied to %d mask(s) of %s, written to %s", post.name, len(results), masks_dir, out_dir)
    return [t.name[: -len(image_ending(t))] for t, _, _ in results]


def probability_file(folder: Path, case: str) -> Path | None:
    """Case ``case``'s probability map in ``folder``: ``CASE_prob.npz`` (``hiennu_predict --save-probabilities npz``),
    else ``CASE.npz`` (a fold's validation, ``hiennu_train --npz``; nnU-Net's ``--npz``), else None."""
    return next((folder / name for name in (f"{case}_prob.npz", f"{case}.npz") if (folder / name).is_file()), None)


def folder_masks(masks_dir: Path) -> dict[str, Path]:
    """Case id -> mask file of every ``CASE<ending>`` in ``masks_dir`` (hidden files, probability images
    ``CASE_prob.<ending>`` of ``hiennu_predict --save-probabilities image`` and other files left out)."""
    if not masks_dir.is_dir():
        raise HiennuError(f"-i {masks_dir}: folder of masks not found")
    masks: dict[str, Path] = {}
    for path in sorted(masks_dir.iterdir()):
        if path.name.startswith(".") or image_ending(path) is None or is_probability_image(path):
            continue
        if path.is_symlink() and not path.exists():
            raise HiennuError(f"-i {masks_dir}: {path.name} is a link to {os.readlink(path)}, which does not exist; "
                              f"restore the mask or remove the link")
        if path.is_file():
            case = strip_ending(path)
            if case in masks:
                raise HiennuError(f"-i {masks_dir}: case {case} has two masks, {masks[case].name} and {path.name}; "
                                  f"keep one")
            masks[case] = path
    if not masks:
        raise HiennuError(f"-i {masks_dir}: no masks (CASE.mha, CASE.nii.gz ...)")
    return masks


def _case_probabilities(folder: Path, case: str, geometry: Geometry) -> np.ndarray:
    """Case ``case``'s probabilities in ``folder`` (:func:`probability_file`), on the mask's grid."""
    if not folder.is_dir():
        raise HiennuError(f"--probabilities {folder}: folder not found; give the folder of CASE_prob.npz that "
                          f"hiennu_predict --save-probabilities npz wrote")
    file = probability_file(folder, case)
    if file is None:
        raise HiennuError(f"case {case}: no {case}_prob.npz (or {case}.npz) in --probabilities {folder}; predict the "
                          f"case with hiennu_predict --save-probabilities npz")
    return read_probabilities(file, geometry, f"case {case}", reference_name="mask")


def raw_dataset_of(dataset: str | int) -> Path:
    """The raw dataset folder of ``dataset`` under ``$hiennu_raw``."""
    return raw_root() / resolve_dataset(dataset, [raw_root()])
