"""The challenge's reference baseline: lesion where ZADC < -2 inside the brain (:func:`hiennu.masks.rule_mask`).

The brain is where the ADC map is non-zero (the maps are skull-stripped, background exactly 0).
Optional removal of components smaller than ``min_component_voxels`` (26-connected); on the 37
dev cases, removing components under 10 voxels gave the best simple rule (see the design card).
The "probability" of a voxel is its mask value (0.0 or 1.0): the rule has no soft output.

A rule folder or rule zip (:mod:`hiennu.postprocessing.rule_folder`: the rule with the post-processing chosen for it
by cross-validation) predicts through :func:`rule_predictor`, so ``hiennu_predict -m FOLDER_OR_ZIP``, the default
model and the challenge container treat it like a model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.inference.folder_prediction import CasePredictor
from hiennu.io.channels import adc_zadc_channels
from hiennu.io.image import Geometry
from hiennu.masks import RULE_THRESHOLD, rule_mask
from hiennu.postprocessing.record import PostProcessing, with_size_rule
from hiennu.postprocessing.rule_folder import RuleFolder, check_rule_postprocessing

BASELINES = ("zadc",)


class ZadcThresholdBaseline(CasePredictor):
    """Mask = (ZADC < threshold) and (ADC != 0), on the native grid; no model involved.

    channel_names: the channel order of the inputs; must contain ``ADC`` and ``ZADC``. postprocessing: a record
    chosen for the rule on cross-validation (``hiennu_determine_postprocessing --rule``: ADC cap, lesion filter, ...),
    applied to every mask with the case's images; min_component_voxels, when given, replaces its component size
    (:func:`~hiennu.postprocessing.record.with_size_rule`).
    """

    def __init__(self, threshold: float = RULE_THRESHOLD, min_component_voxels: int | None = None,
                 channel_names: Sequence[str] = ("ADC", "ZADC"), postprocessing: PostProcessing | None = None):
        adc, zadc = adc_zadc_channels(channel_names, required=True, source="the ZADC baseline's inputs")
        self.threshold = float(threshold)
        self.postprocessing = with_size_rule(postprocessing, 0, forced=min_component_voxels)
        check_rule_postprocessing(self.postprocessing, "the ZADC rule's post-processing")
        self.channel_names = tuple(channel_names)
        self._adc, self._zadc = adc, zadc
        self.batch_size = 1

    def prepare(self, images: list[np.ndarray], geometry: Geometry) -> np.ndarray:
        return rule_mask(images[self._zadc], images[self._adc], self.threshold).astype(np.uint8)

    def predict_prepared(self, prepared: list[np.ndarray], geometries: list[Geometry],
                         need_probabilities: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return [(m, m.astype(np.float32) if need_probabilities else None) for m in prepared]


def make_baseline(name: str, min_component_voxels: int | None = None,
                  postprocessing: PostProcessing | None = None) -> ZadcThresholdBaseline:
    """The baseline called ``name`` (``zadc``), with ``postprocessing`` and ``min_component_voxels`` as
    :class:`ZadcThresholdBaseline` takes them."""
    if name != "zadc":
        raise HiennuError(f"unknown baseline {name!r}; available: {', '.join(BASELINES)}")
    return ZadcThresholdBaseline(min_component_voxels=min_component_voxels, postprocessing=postprocessing)


def rule_predictor(rule: RuleFolder, min_component_voxels: int | None = None) -> ZadcThresholdBaseline:
    """The predictor of a rule folder or rule zip read into memory: its threshold, its dataset's channel order and
    its post-processing (``min_component_voxels``, when given, replaces the record's component size)."""
    return ZadcThresholdBaseline(rule.spec.threshold, min_component_voxels, rule.dataset.channel_names,
                                 rule.postprocessing)
