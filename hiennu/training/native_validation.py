"""The fold's validation in native geometry, through the inference path.

At the end of training a checkpoint of the fold (``checkpoint_final.pth`` by default, as in
nnU-Net; ``checkpoint_best.pth`` with ``--checkpoint best``, though it was chosen on these very
cases) predicts its validation cases from their raw images exactly as ``hiennu_predict`` would
(:class:`~hiennu.inference.predictor.Predictor`, folder prediction), and they are scored against
the raw labels with the challenge metrics (:func:`~hiennu.evaluation.evaluate.evaluate_folders`).
``validation/summary.json`` records the checkpoint under ``"checkpoint"``
(:func:`validated_checkpoint` reads it back) and, under ``"probabilities"``, whether the cases' sigmoid
probabilities were kept beside the masks as ``CASE.npz`` (``hiennu_train --npz``, nnU-Net's; what
``hiennu_find_best_configuration`` averages to score ensembles without predicting again).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hiennu.errors import HiennuError
from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.inference.predictor import Predictor
from hiennu.io.atomic import read_json, write_json
from hiennu.io.cases import discover_cases
from hiennu.io.checkpoint import BEST, FINAL, checkpoint_digest, stale_validation_problem
from hiennu.io.dataset_json import load_dataset_json
from hiennu.log import get_logger
from hiennu.paths import SUMMARY_FILE, VALIDATE, VALIDATION_DIR, ModelFolder, raw_root, train_command
from hiennu.plans import model_inference_window

# hiennu_predict --save-probabilities npz names a case's probabilities CASE_prob.npz beside CASE.mha; a fold's
# validation keeps them as CASE.npz, nnU-Net's name in its validation folders (ModelFolder.validation_probabilities)
_PREDICTOR_PROBABILITIES = "{case}_prob.npz"

log = get_logger(__name__)


def validated_checkpoint(fold_dir: Path) -> str | None:
    """The checkpoint file that made ``fold_dir/validation/``'s masks, as its ``summary.json`` records it;
    None when the fold has no validation summary. Summaries written before the choice existed were made
    with ``checkpoint_best.pth``, which is what they return."""
    path = Path(fold_dir) / VALIDATION_DIR / SUMMARY_FILE
    if not path.is_file():
        return None
    recorded = read_json(path).get("checkpoint", BEST)
    if not isinstance(recorded, str):
        raise HiennuError(f"{path}: 'checkpoint' must be a checkpoint file name, got {recorded!r}")
    return recorded


def validation_keeps_probabilities(fold_dir: Path) -> bool:
    """Whether the fold's validation kept each case's probabilities (``CASE.npz``, ``--npz``): its
    ``validation/summary.json`` says so, or, without a summary (a validation interrupted before it wrote one, which
    removes the summary first and the maps only when it keeps none), ``CASE.npz`` files are there."""
    folder = Path(fold_dir) / VALIDATION_DIR
    if (folder / SUMMARY_FILE).is_file():
        return read_json(folder / SUMMARY_FILE).get("probabilities") is True
    return folder.is_dir() and any(p.suffix == ".npz" and not p.name.endswith(_PREDICTOR_PROBABILITIES.format(case=""))
                                   for p in folder.iterdir())


def validation_is_current(fold_dir: Path, checkpoint: str, probabilities: bool) -> bool:
    """Whether the fold's validation was made with ``checkpoint`` (a file name) as it is now (its SHA-256, when the
    summary records it) and the model's sliding window now (``inference_window``), and, when ``probabilities`` is
    asked for, kept them: then a finished fold has nothing left to do (:func:`validation_problem` says why not)."""
    return validation_problem(fold_dir, checkpoint, probabilities) is None


def validation_problem(fold_dir: Path, checkpoint: str, probabilities: bool) -> str | None:
    """Why the fold's validation is not the one :func:`validation_is_current` asks for, or None."""
    made_with = validated_checkpoint(fold_dir)
    if made_with is None:
        return "it has no validation"
    if made_with != checkpoint:
        return f"its validation was made with {made_with}, not {checkpoint}"
    if probabilities and not validation_keeps_probabilities(fold_dir):
        return "its validation kept no probabilities"
    return stale_validation_problem(fold_dir, Path(fold_dir) / VALIDATION_DIR / SUMMARY_FILE,
                                    model_inference_window(Path(fold_dir).parent))


def validation_input_problem(dataset_name: str, case_ids: list[str]) -> str | None:
    """Why the final validation could not predict and score ``case_ids`` from the raw dataset (a channel image or
    label missing), or None (also when the raw dataset is not there at all: the validation is then skipped with a
    warning). Checked before training: a raw file gone after preprocessing stopped the validation after the
    whole fold had trained."""
    raw_dir = raw_root() / dataset_name
    if not all((raw_dir / part).exists() for part in ("imagesTr", "labelsTr", "dataset.json")):
        return None  # the validation says what it lacks then (and reads the model's own dataset.json)
    dataset = load_dataset_json(raw_dir)
    found = {c.case_id: c for c in discover_cases(raw_dir / "imagesTr", dataset.num_channels, raw_dir / "labelsTr",
                                                  dataset.file_ending)}
    for case_id in case_ids:
        case = found.get(case_id)
        missing = ([f"{case_id}_{k:04d}{dataset.file_ending} ({dataset.channel_names[k]})"
                    for k in (range(dataset.num_channels) if case is None else case.missing_channels)]
                   + ([] if case is not None and case.label_file is not None else
                      [f"labelsTr/{case_id}{dataset.file_ending}"]))
        if missing:
            return (f"case {case_id}, a validation case of this fold: {', '.join(missing)} missing in {raw_dir}, "
                    f"which the final validation predicts and scores it from after training; restore the file(s), "
                    f"or train with --no-final-validation and validate later with --val")
    return None


def predict_and_score_validation(model_dir: Path, fold: int, case_ids: list[str], dataset_name: str,
                                 device: torch.device, batch_size: int | None = None, cpu_bf16: bool = False,
                                 checkpoint: str = FINAL, save_probabilities: bool = False) -> dict | None:
    """Predict the fold's validation cases from their raw images with the fold's ``checkpoint``
    (a file name in ``fold_K/``, default ``checkpoint_final.pth``), as ``hiennu_predict`` does (:meth:`~hiennu.inference.predictor.Predictor.predict_folder`, without
    post-processing: these are the predictions it is chosen on), in each case's native geometry,
    into ``fold_K/validation/CASE<ending>``, and score them against the raw labels with the
    challenge metrics (``validation/summary.json`` + per-case CSV). The summary records the
    checkpoint's file name under ``"checkpoint"``, ``save_probabilities`` under ``"probabilities"`` and the
    plans' ``inference_window`` the masks were predicted with under ``"inference_window"``.

    save_probabilities: also keep each case's sigmoid probabilities (float32 ``(z, y, x)`` on the case's
    native grid) as ``validation/CASE.npz``, written by the predictor exactly as ``hiennu_predict
    --save-probabilities npz`` writes them (key ``probabilities``, with the grid's ``spacing_xyz``,
    ``origin_xyz`` and ``direction``); the mask is ``probabilities >= 0.5`` less the plans' small components.
    Without it, probabilities of an earlier validation are removed, so none is left beside other masks.

    batch_size: cases (or sliding windows) per forward pass (None: the predictor's default).
    cpu_bf16: bfloat16 autocast on a CPU, as the fold was trained (the plans' ``training.cpu_bf16``).
    Returns the evaluation summary, or None (with a warning) when the raw dataset is not there.
    """
    raw_dir = raw_root() / dataset_name
    if not (raw_dir / "imagesTr").is_dir() or not (raw_dir / "labelsTr").is_dir():
        log.warning("final validation skipped: the raw dataset %s (imagesTr/, labelsTr/) is not there; the "
                    "checkpoints are complete: restore it, then validate the fold: %s", raw_dir,
                    train_command(model_dir, fold, VALIDATE, npz=save_probabilities, best=checkpoint == BEST))
        return None
    model = ModelFolder(model_dir)
    out_dir = model.validation_dir(fold)
    predictor = Predictor.from_model_dir(model_dir, folds=[fold], checkpoint=checkpoint, device=device,
                                         use_postprocessing=False, batch_size=batch_size, cpu_bf16=cpu_bf16)
    (out_dir / SUMMARY_FILE).unlink(missing_ok=True)  # never a summary of one checkpoint beside another's masks
    for case in case_ids:  # nor probabilities of another checkpoint (kept ones are replaced case by case below)
        if not save_probabilities:
            model.validation_probabilities(fold, case).unlink(missing_ok=True)
        (out_dir / _PREDICTOR_PROBABILITIES.format(case=case)).unlink(missing_ok=True)  # left by a killed run
    report = predictor.predict_folder(raw_dir / "imagesTr", out_dir, case_ids=case_ids,
                                      save_probabilities=save_probabilities, probability_format="npz")
    if not report.ok:
        raise HiennuError(f"final validation: the validation cases could not all be predicted ({report.summary()})")
    if save_probabilities:
        for case in case_ids:
            os.replace(out_dir / _PREDICTOR_PROBABILITIES.format(case=case), model.validation_probabilities(fold, case))
    summary = evaluate_folders(raw_dir / "labelsTr", out_dir, output_json=out_dir / SUMMARY_FILE,
                               images_dir=raw_dir / "imagesTr", case_ids=case_ids, num_processes=1)
    digest = checkpoint_digest(model.fold_dir(fold) / checkpoint)
    made = dict(checkpoint=checkpoint, checkpoint_sha256=digest, probabilities=bool(save_probabilities),
                inference_window=predictor.configuration.inference_window)
    summary.update(made)
    write_json({**read_json(out_dir / SUMMARY_FILE), **made}, out_dir / SUMMARY_FILE)
    return summary
