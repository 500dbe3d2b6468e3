"""The post-processing candidates the selection measures, and the ADC caps derived from the data."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hiennu.postprocessing.record import PostProcessing

COMPONENT_SIZES = (5, 10, 20, 50)
ADC_CAP_QUANTILES = (0.99, 0.995, 0.999)


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
