"""The fold's validation in native geometry, through the inference path.

At the end of training the fold's best checkpoint predicts its validation cases from their raw
images exactly as ``hiennu_predict`` would (:class:`~hiennu.inference.predictor.Predictor`, folder
prediction), and they are scored against the raw labels with the challenge metrics
(:func:`~hiennu.evaluation.evaluate.evaluate_folders`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hiennu.errors import HiennuError
from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.inference.predictor import Predictor
from hiennu.io.checkpoint import BEST
from hiennu.log import get_logger
from hiennu.paths import raw_root

log = get_logger(__name__)


def predict_and_score_validation(model_dir: Path, fold: int, case_ids: list[str], dataset_name: str,
                                 device: torch.device, batch_size: int | None = None, cpu_bf16: bool = False) -> dict | None:
    """Predict the fold's validation cases from their raw images with the fold's best checkpoint,
    as ``hiennu_predict`` does (:meth:`~hiennu.inference.predictor.Predictor.predict_folder`, without
    post-processing: these are the predictions it is chosen on), in each case's native geometry,
    into ``fold_K/validation/CASE<ending>``, and score them against the raw labels with the
    challenge metrics (``validation/summary.json`` + per-case CSV).

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
    out_dir = model_dir / f"fold_{fold}" / "validation"
    predictor = Predictor.from_model_dir(model_dir, folds=[fold], checkpoint=BEST, device=device,
                                         use_postprocessing=False, batch_size=batch_size, cpu_bf16=cpu_bf16)
    report = predictor.predict_folder(raw_dir / "imagesTr", out_dir, case_ids=case_ids)
    if not report.ok:
        raise HiennuError(f"final validation: the validation cases could not all be predicted ({report.summary()})")
    return evaluate_folders(raw_dir / "labelsTr", out_dir, output_json=out_dir / "summary.json",
                            images_dir=raw_dir / "imagesTr", case_ids=case_ids, num_processes=1)
