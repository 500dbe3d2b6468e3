"""The rule ``ZADC < -2`` inside the brain as a cross-validation "model", so it gets the same post-processing.

Post-processing chosen by cross-validation lifts the plain rule as much as it lifts a network (on the 37
BONBID dev cases from 0.47 to 0.63-0.70 Dice, nested, by the candidates it is chosen among), so "above the rule" only means something when the rule gets
the same treatment: its masks stand where a model's validation masks stand
(:class:`~hiennu.postprocessing.selection.CaseImages`), the folds are the model's (``splits_final.json``), and
the choice is :func:`hiennu.postprocessing.selection.select_on_cases` or
:func:`~hiennu.postprocessing.selection.nested_estimate`, line for line the code a model's masks go through.
The rule needs no training, so each case's "CV mask" is simply its rule mask.

Used by ``hiennu_find_best_configuration`` (the reference row), the loss study's comparison
(:mod:`hiennu.study.postprocessed_comparison`) and ``benchmarks/postprocessing_cv.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hiennu.io.dataset_json import load_dataset_json
from hiennu.masks import rule_mask
from hiennu.postprocessing.selection import CaseImages, load_cases


def rule_cases(cases: Mapping[str, CaseImages]) -> dict[str, CaseImages]:
    """The same cases with the rule ``ZADC < -2`` inside the brain as the prediction."""
    return {case: CaseImages(rule_mask(c.zadc, c.adc).astype(np.uint8), c.ref, c.zadc, c.adc, c.spacing_zyx)
            for case, c in cases.items()}


def load_rule_cases(raw_dir: Path, case_ids: Sequence[str], fold_of: Mapping[str, int] | None = None
                    ) -> dict[str, CaseImages]:
    """The raw cases ``case_ids`` with the rule's mask as their prediction (each label stands in for the
    prediction while reading, :func:`~hiennu.postprocessing.selection.load_cases`, and is then replaced by the
    rule's mask). fold_of names the fold in errors."""
    raw_dir = Path(raw_dir)
    ending = load_dataset_json(raw_dir).file_ending
    labels = {case: raw_dir / "labelsTr" / f"{case}{ending}" for case in case_ids}
    return rule_cases(load_cases(labels, raw_dir, None if fold_of is None else dict(fold_of)))
