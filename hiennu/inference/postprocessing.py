"""Post-processing of predicted masks, chosen by cross-validation and stored with the model.

A :class:`PostProcessing` says what is done to a binary mask on the native grid after the
threshold, in this order:

0. ``max_adc``: voxels whose ADC (the raw ADC channel, 10^-6 mm^2/s) is above it are removed (None
   keeps all). Acute HIE lesions restrict diffusion; a voxel with a low ZADC but a CSF-like ADC is
   a misregistration or partial-volume artefact of the atlas, not a lesion. The candidate caps come
   from the data (high quantiles of the ADC inside the training lesions: :func:`adc_cap_candidates`),
   and a cap is kept only when cross-validation says it helps;
1. ``min_component_voxels``: 26-connected components with fewer voxels are removed (0 or 1 keeps all);
2. ``keep_touching_rule``: only the components that overlap (share at least one voxel with) the
   rule mask ``ZADC < rule_threshold`` inside the brain (``ADC != 0``) are kept. ZADC is read on
   its raw atlas z-score scale (the input image, before any normalization);
3. ``component_filter``: a lesion filter fitted by cross-validation keeps or drops each remaining
   component by its volume (mm³), extent along the slice axis (mm) and contact with the edge of the brain
   (:mod:`hiennu.inference.lesion_filter`; None keeps all).

The model folder's ``postprocessing.json`` records the choice (``"chosen"``) next to the evidence
(each candidate's cross-validated Dice); :func:`load_postprocessing` reads it, the predictor
applies it. The choice itself is made by
:func:`hiennu.evaluation.postprocessing_selection.select_postprocessing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from hiennu.errors import HiennuError
from hiennu.inference.components import FULL_CONNECTIVITY, remove_small_components
from hiennu.inference.lesion_filter import ComponentFilter
from hiennu.io.atomic import read_json_file

POSTPROCESSING_FILE = "postprocessing.json"
RULE_THRESHOLD = -2.0
COMPONENT_SIZES = (5, 10, 20, 50)
ADC_CAP_QUANTILES = (0.99, 0.995, 0.999)


@dataclass(frozen=True)
class PostProcessing:
    """What is done to a predicted mask (see the module docstring); the default does nothing."""

    min_component_voxels: int = 0
    keep_touching_rule: bool = False
    rule_threshold: float = RULE_THRESHOLD
    max_adc: float | None = None
    component_filter: ComponentFilter | None = None

    @property
    def name(self) -> str:
        """A short human name: ``none``, ``ADC <= 1400``, ``remove < 10 vox``, ``touch ZADC<-2``, ``lesion filter``,
        joined by ``+``."""
        parts = []
        if self.max_adc is not None:
            parts.append(f"ADC <= {self.max_adc:g}")
        if self.min_component_voxels > 1:
            parts.append(f"remove < {self.min_component_voxels} vox")
        if self.keep_touching_rule:
            parts.append(f"touch ZADC<{self.rule_threshold:g}")
        if self.component_filter is not None:
            parts.append("lesion filter")
        return " + ".join(parts) or "none"

    @property
    def is_identity(self) -> bool:
        return (self.min_component_voxels <= 1 and not self.keep_touching_rule and self.max_adc is None
                and self.component_filter is None)

    @property
    def needs_adc(self) -> bool:
        """Whether it reads the case's ADC (the cap, and the brain of the lesion filter)."""
        return self.max_adc is not None or self.component_filter is not None

    @property
    def needs_images(self) -> bool:
        """Whether it reads the case's raw channels (ZADC for the rule, ADC for the cap and the lesion filter)."""
        return self.keep_touching_rule or self.needs_adc

    def to_dict(self) -> dict[str, Any]:
        return {"min_component_voxels": self.min_component_voxels, "keep_touching_rule": self.keep_touching_rule,
                "rule_threshold": self.rule_threshold, "max_adc": self.max_adc,
                "component_filter": None if self.component_filter is None else self.component_filter.to_dict()}

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "PostProcessing":
        if not isinstance(d, dict):
            raise HiennuError(f"{source}: 'chosen' must be an object with {', '.join(_FIELDS)}; got {d!r}; "
                              f"re-run the post-processing selection")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise HiennuError(f"{source}: unknown post-processing field(s) {', '.join(unknown)}; known are "
                              f"{', '.join(_FIELDS)}")
        k = d.get("min_component_voxels", 0)
        touch = d.get("keep_touching_rule", False)
        threshold = d.get("rule_threshold", RULE_THRESHOLD)
        cap = d.get("max_adc")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise HiennuError(f"{source}: min_component_voxels must be a whole number >= 0, got {k!r}")
        if not isinstance(touch, bool):
            raise HiennuError(f"{source}: keep_touching_rule must be true or false, got {touch!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise HiennuError(f"{source}: rule_threshold must be a number (ZADC z-score), got {threshold!r}")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0):
            raise HiennuError(f"{source}: max_adc must be null or a positive number (ADC, 10^-6 mm^2/s), got {cap!r}")
        lesion_filter = d.get("component_filter")
        lesion_filter = None if lesion_filter is None else ComponentFilter.from_dict(lesion_filter, source)
        return cls(int(k), touch, float(threshold), None if cap is None else float(cap), lesion_filter)


_FIELDS = ("min_component_voxels", "keep_touching_rule", "rule_threshold", "max_adc", "component_filter")


def candidates(sizes: Sequence[int] = COMPONENT_SIZES, adc_caps: Sequence[float] = ()) -> list[PostProcessing]:
    """Every candidate the selection measures: none, each size alone, the rule alone, the rule with each size,
    then each ADC cap alone and with each size."""
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


def rule_mask(zadc: np.ndarray, adc: np.ndarray | None, threshold: float = RULE_THRESHOLD) -> np.ndarray:
    """``ZADC < threshold`` inside the brain (``ADC != 0``; everywhere when ``adc`` is None); bool (z, y, x)."""
    mask = np.asarray(zadc) < threshold
    if adc is not None:
        mask &= np.asarray(adc) != 0
    return mask


def keep_components_touching(mask: np.ndarray, marker: np.ndarray) -> np.ndarray:
    """The 26-connected components of ``mask`` (z, y, x) that share at least one voxel with ``marker``; uint8 {0, 1}."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if not mask.any():
        return mask.astype(np.uint8)
    labels, n = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(labels[np.asarray(marker, dtype=bool) & mask])] = True
    keep[0] = False
    return keep[labels].astype(np.uint8)


def apply_postprocessing(mask: np.ndarray, post: PostProcessing, zadc: np.ndarray | None = None,
                         adc: np.ndarray | None = None, spacing_zyx: Sequence[float] | None = None) -> np.ndarray:
    """``mask`` (z, y, x) after ``post``; ``zadc``/``adc`` (same shape, raw values) are needed for the rule part,
    ``adc`` for the ADC cap and the lesion filter, ``spacing_zyx`` (the case's voxel spacing in mm) for a
    lesion filter in mm (:mod:`hiennu.inference.lesion_filter`)."""
    if post.needs_adc:
        if adc is None:
            raise HiennuError(f"post-processing {post.name!r} needs the case's ADC image, and none was given")
        if np.shape(adc) != np.shape(mask):
            raise HiennuError(f"post-processing {post.name!r}: ADC shape {np.shape(adc)} differs from the mask's "
                              f"{np.shape(mask)} (both (z, y, x) on the native grid)")
    if post.max_adc is not None:
        mask = np.where(np.asarray(adc) > post.max_adc, 0, np.asarray(mask)).astype(np.uint8)
    out = remove_small_components(mask, post.min_component_voxels)
    if post.keep_touching_rule:
        if zadc is None:
            raise HiennuError(f"post-processing {post.name!r} needs the case's ZADC image, and none was given")
        if np.shape(zadc) != out.shape:
            raise HiennuError(f"post-processing {post.name!r}: ZADC shape {np.shape(zadc)} differs from the mask's "
                              f"{out.shape} (both (z, y, x) on the native grid)")
        out = keep_components_touching(out, rule_mask(zadc, adc, post.rule_threshold))
    if post.component_filter is not None:
        out = post.component_filter.apply(out, np.asarray(adc) != 0, spacing_zyx)
    return out


def channel_index(channel_names: Sequence[str], wanted: str) -> int | None:
    """Index of the channel called ``wanted`` (case-insensitive), else None."""
    lowered = [c.lower() for c in channel_names]
    return lowered.index(wanted.lower()) if wanted.lower() in lowered else None


def postprocessing_from_record(record: Any, source: str) -> PostProcessing:
    """The chosen :class:`PostProcessing` of a ``postprocessing.json`` record (already parsed)."""
    if not isinstance(record, dict) or "chosen" not in record:
        raise HiennuError(f"{source}: not a post-processing record (no 'chosen' entry); re-run the "
                          f"post-processing selection or delete the file to predict without it")
    return PostProcessing.from_dict(record["chosen"], source)


def load_postprocessing(model_dir: str | Path) -> PostProcessing | None:
    """The post-processing stored in ``model_dir/postprocessing.json``; None when there is no such file."""
    path = Path(model_dir) / POSTPROCESSING_FILE
    if not path.is_file():
        return None
    record = read_json_file(path, "", "re-run the post-processing selection or delete the file")
    return postprocessing_from_record(record, str(path))
