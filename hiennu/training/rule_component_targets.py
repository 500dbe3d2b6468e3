"""Training targets made of the rule's components: which of them are lesion, kept whole.

A network that starts from the rule ``ZADC < t`` in ``veto`` mode (``network.rule_prior``) can only remove the
rule's voxels. Trained on the reference itself it spends its capacity on the borders of the rule's components,
which it calls worse than keeping them whole (results.md, sessions 32-35), while most of the Dice within reach
is in deciding which components are lesion at all (``benchmarks/rule_ceiling.py``). This module gives it that
task as its target: the 26-connected components of the rule, after an ADC cap, that touch the reference, each
kept whole; every other voxel (the rule's other components, lesion voxels the rule misses, voxels above the
cap) is 0. Validation and every score stay against the reference.

Everything works on the *preprocessed* grid and values: the rule is ``data[zadc] < t`` on the ZADC channel
(``atlas_zscore`` keeps the atlas z-score scale, so ``t`` is the plans' ``rule_prior_threshold``), and the cap
is a value of the normalized ADC channel (a monotone map of the clipped raw ADC). The fold's cap is the
:data:`~hiennu.postprocessing.candidates.FIXED_CAP_QUANTILE` quantile of the ADC inside the reference lesions
of the fold's *training* cases, the quantile the post-processing's own cap uses, so no validation case
informs it. Connected components are :func:`hiennu.postprocessing.components.keep_components_touching`, the
post-processing's own.

Why a module of its own: the target has to be made from the whole case (a patch would cut components), in
the loader's worker processes, so it is a picklable callable (:class:`RuleComponentTargets`) that the loader
applies to each case before it cuts the patch; the trainer labels every training case once beforehand
(:meth:`RuleComponentTargets.fill`), so the workers only look the targets up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.postprocessing.candidates import FIXED_CAP_QUANTILE
from hiennu.postprocessing.components import keep_components_touching
from hiennu.training.data import load_preprocessed_case


def rule_component_target(data: np.ndarray, seg: np.ndarray, zadc_channel: int, threshold: float,
                          adc_channel: int | None = None, adc_cap: float | None = None) -> np.ndarray:
    """The rule's components that touch the reference, kept whole: uint8 ``(1, z, y, x)`` in {0, 1}.

    data: a preprocessed case, float32 ``(C, z, y, x)``; seg: its reference ``(1, z, y, x)`` (non-zero = lesion).
    The rule is ``data[zadc_channel] < threshold``; with ``adc_cap``, voxels whose ``data[adc_channel]`` is
    above it are dropped first (before the components are formed, as the post-processing's cap).
    """
    data = np.asarray(data)
    seg = np.asarray(seg)
    if data.ndim != 4 or seg.shape != (1, *data.shape[1:]):
        raise HiennuError(f"rule-component target: data {data.shape} and reference {seg.shape} must be "
                          f"(C, z, y, x) and (1, z, y, x) of one grid")
    rule = data[zadc_channel] < threshold
    if adc_cap is not None:
        if adc_channel is None:
            raise HiennuError("rule-component target: an ADC cap needs the ADC channel")
        rule &= data[adc_channel] <= adc_cap
    return keep_components_touching(rule, seg[0] != 0)[None]


def lesion_adc_quantile(case_dir: Path, case_ids: Sequence[str], adc_channel: int,
                        quantile: float = FIXED_CAP_QUANTILE) -> float | None:
    """The ``quantile`` of the (normalized) ADC channel over the reference lesion voxels of ``case_ids``.

    Read from the preprocessed cases in ``case_dir`` (``CASE.npy``, ``CASE_seg.npy``). Lesion voxels outside
    the brain (every channel 0, as normalization leaves the background) are left out: there the normalized
    ADC is 0, a mid-range value the raw ADC (0) does not have. None when no case has a lesion voxel in the
    brain (then no cap is applied).
    """
    values = []
    for case_id in case_ids:
        data, seg, _ = load_preprocessed_case(Path(case_dir), case_id, mmap=True)
        lesion = (np.asarray(seg[0]) != 0) & np.any(np.asarray(data) != 0, axis=0)
        if lesion.any():
            values.append(np.asarray(data[adc_channel])[lesion])
    if not values:
        return None
    return float(np.quantile(np.concatenate(values).astype(np.float64), quantile))


@dataclass
class RuleComponentTargets:
    """Replaces a loaded case's reference by :func:`rule_component_target` (the loader calls it per case).

    ``case_id`` keys a cache of the targets. The loader's worker processes get a copy and are started anew each
    epoch, so what they add to it lasts one epoch: :meth:`fill` labels the training cases once, in the main
    process, before the workers start. Picklable.
    """

    zadc_channel: int
    threshold: float
    adc_channel: int | None = None
    adc_cap: float | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def fill(self, case_dir: Path, case_ids: Sequence[str]) -> "RuleComponentTargets":
        """Label the target of every case of ``case_ids`` (read from ``case_dir``) into the cache; returns self."""
        for case_id in case_ids:
            data, seg, _ = load_preprocessed_case(Path(case_dir), case_id, mmap=True)
            self(case_id, data, seg)
        return self

    def __call__(self, case_id: str, data: np.ndarray, seg: np.ndarray) -> np.ndarray:
        target = self._cache.get(case_id)
        if target is None:
            target = rule_component_target(data, seg, self.zadc_channel, self.threshold, self.adc_channel,
                                           self.adc_cap)
            self._cache[case_id] = target
        return target
