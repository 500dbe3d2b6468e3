"""The post-processing candidates the selection measures, and the ADC caps derived from the data."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.postprocessing.record import PostProcessing

COMPONENT_SIZES = (5, 10, 20, 50)
ADC_CAP_QUANTILES = (0.99, 0.995, 0.999)

# Which candidates a choice is made among. ALL: every fixed candidate below and the lesion filters fitted after
# no cap and after each cap (about 30; nnU-Net-style, the most to choose from). CAP_AND_FILTER: one recipe, the ADC
# cap at FIXED_CAP_QUANTILE of the lesion ADC followed by the lesion filter fitted after it, kept only when it beats
# no post-processing; its cap and filter are still derived from the cases of the choice, but there is no choice
# between recipes, which on 30 cases can swing a held-out fold by 0.2 Dice (results.md, session 33).
# JUDGED_RULE: one recipe too, the rule's components judged by the network: the model's mask replaced by the rule's
# (ZADC < -2 in the brain), the same ADC cap, then the lesion filter with a fourth feature, the network's mean
# probability over each component (lesion_filter.FEATURES_WITH_PROBABILITY); it needs every case's probabilities
# (hiennu_train --npz). Why: a network that can only veto the rule's voxels decides its components hardly better
# than three hand-made features, yet its mean probability over a component adds to them (results.md, sessions
# 34-35): as a ranking, little over all components, and 0.04-0.06 ROC AUC among the small ones for four of five
# 600-step 3d_fullres trainings (session 37, benchmarks/component_judgment.py).
ALL_CANDIDATES = "all"
CAP_AND_FILTER = "cap-filter"
JUDGED_RULE = "judged-rule"
CANDIDATE_SETS = (ALL_CANDIDATES, CAP_AND_FILTER, JUDGED_RULE)
FIXED_CAP_QUANTILE = 0.995


def needs_probabilities(candidate_set: str) -> bool:
    """Whether the choice among ``candidate_set`` reads the network's cross-validation probabilities."""
    return check_candidate_set(candidate_set) == JUDGED_RULE


def rule_candidate_set(candidate_set: str) -> str:
    """What the rule ``ZADC < -2``'s own choice is made among when the models' is ``candidate_set``: the same set,
    except :data:`JUDGED_RULE`, which has no network to ask on the rule's masks and becomes :data:`CAP_AND_FILTER`,
    the same recipe without the network (so the comparison with the rule isolates what the network adds)."""
    return CAP_AND_FILTER if check_candidate_set(candidate_set) == JUDGED_RULE else candidate_set


def check_candidate_set(candidate_set: str) -> str:
    """``candidate_set`` when it is one of :data:`CANDIDATE_SETS`; otherwise :class:`HiennuError` naming them."""
    if candidate_set not in CANDIDATE_SETS:
        raise HiennuError(f"post-processing candidates must be one of {', '.join(CANDIDATE_SETS)}, got "
                          f"{candidate_set!r}")
    return candidate_set


def candidates(sizes: Sequence[int] = COMPONENT_SIZES, adc_caps: Sequence[float] = ()) -> list[PostProcessing]:
    """Every fixed candidate the selection measures: none, each size alone, the rule alone, the rule with each
    size, then each ADC cap alone and with each size (the lesion filters are fitted on top:
    :func:`hiennu.postprocessing.selection.filter_candidates`)."""
    out = [PostProcessing()]
    out += [PostProcessing(min_component_voxels=int(k)) for k in sizes]
    out += [PostProcessing(keep_touching_rule=True)]
    out += [PostProcessing(min_component_voxels=int(k), keep_touching_rule=True) for k in sizes]
    for cap in adc_caps:
        out += [PostProcessing(max_adc=float(cap))]
        out += [PostProcessing(min_component_voxels=int(k), max_adc=float(cap)) for k in sizes]
    return out


def adc_cap_candidates(lesion_adc: np.ndarray, quantiles: Sequence[float] = ADC_CAP_QUANTILES) -> list[float]:
    """ADC caps to try: the ``quantiles`` of the ADC values inside reference lesions, rounded to whole units.

    lesion_adc: the raw ADC (10^-6 mm^2/s) of every lesion voxel of the cases the choice is made on.
    Returns the distinct caps in ascending order; none when there are no lesion voxels.
    """
    values = np.asarray(lesion_adc, dtype=np.float64).ravel()
    if values.size == 0:
        return []
    return sorted({float(np.round(np.quantile(values, q))) for q in quantiles})
