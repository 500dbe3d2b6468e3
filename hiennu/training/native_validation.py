"""The fold's validation in native geometry, through the inference path.

At the end of training a checkpoint of the fold (``checkpoint_final.pth`` by default, as in
nnU-Net; ``checkpoint_best.pth`` with ``--checkpoint best``, though it was chosen on these very
cases) predicts its validation cases from their raw images exactly as ``hiennu_predict`` would
(:class:`~hiennu.inference.predictor.Predictor`, folder prediction), and they are scored against
the raw labels with the challenge metrics (:func:`~hiennu.evaluation.evaluate.evaluate_folders`).
``validation/summary.json`` records the checkpoint under ``"checkpoint"``
(:func:`validated_checkpoint` reads it back).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hiennu.errors import HiennuError
from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.inference.predictor import Predictor
from hiennu.io.atomic import read_json, write_json
from hiennu.io.checkpoint import BEST, FINAL
from hiennu.log import get_logger
from hiennu.paths import SUMMARY_FILE, VALIDATION_DIR, ModelFolder, raw_root

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


def predict_and_score_validation(model_dir: Path, fold: int, case_ids: list[str], dataset_name: str,
                                 device: torch.device, batch_size: int | None = None, cpu_bf16: bool = False,
                                 checkpoint: str = FINAL) -> dict | None:
    """Predict the fold's validation cases from their raw images with the fold's ``checkpoint``
    (a file name in ``fold_K/``, default ``checkpoint_final.pth``), as ``hiennu_predict`` does (:meth:`~hiennu.inference.predictor.Predictor.predict_folder`, without
    post-processing: these are the predictions it is chosen on), in each case's native geometry,
    into ``fold_K/validation/CASE<ending>``, and score them against the raw labels with the
    challenge metrics (``validation/summary.json`` + per-case CSV). The summary records the
    checkpoint's file name under ``"checkpoint"``.

    batch_size: cases (or sliding windows) per forward pass (None: the predictor's default).
    cpu_bf16: bfloat16 autocast on a CPU, as the fold was trained (the plans' ``training.cpu_bf16``).
    Returns the evaluation summary, or None (with a warning) when the raw dataset is not there.
    """
    raw_dir = raw_root() / dataset_name
    if not (raw_dir / "imagesTr").is_dir() or not (raw_dir / "labelsTr").is_dir():
        log.warning("final validation skipped: the raw dataset %s (imagesTr/, labelsTr/) is not there; "
                    "the checkpoints are complete, predict and score the validation cases later with "
                    "hiennu_predict and hiennu_evaluate", raw_dir)
        return None
    out_dir = ModelFolder(model_dir).validation_dir(fold)
    predictor = Predictor.from_model_dir(model_dir, folds=[fold], checkpoint=checkpoint, device=device,
                                         use_postprocessing=False, batch_size=batch_size, cpu_bf16=cpu_bf16)
    (out_dir / SUMMARY_FILE).unlink(missing_ok=True)  # never a summary of one checkpoint beside another's masks
    report = predictor.predict_folder(raw_dir / "imagesTr", out_dir, case_ids=case_ids)
    if not report.ok:
        raise HiennuError(f"final validation: the validation cases could not all be predicted ({report.summary()})")
    summary = evaluate_folders(raw_dir / "labelsTr", out_dir, output_json=out_dir / SUMMARY_FILE,
                               images_dir=raw_dir / "imagesTr", case_ids=case_ids, num_processes=1)
    summary["checkpoint"] = checkpoint
    write_json({**read_json(out_dir / SUMMARY_FILE), "checkpoint": checkpoint}, out_dir / SUMMARY_FILE)
    return summary
