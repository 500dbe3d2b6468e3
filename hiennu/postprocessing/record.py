"""The post-processing record: what is done to a predicted mask, stored with the model.

A :class:`PostProcessing` says what is done to a binary mask on the native grid after the
threshold, in this order:

0. ``start_from_rule``: the mask is replaced by the rule's, ``ZADC < rule_threshold`` inside the brain
   (:func:`hiennu.masks.rule_mask`), so that the steps below, and a lesion filter that asks the network
   (:data:`hiennu.postprocessing.lesion_filter.FEATURES_WITH_PROBABILITY`), judge the rule's whole components
   instead of the network's voxels (the "judged-rule" candidates, :mod:`hiennu.postprocessing.candidates`);
1. ``max_adc``: voxels whose ADC (the raw ADC channel, 10^-6 mm^2/s) is above it are removed (None
   keeps all). Acute HIE lesions restrict diffusion; a voxel with a low ZADC but a CSF-like ADC is
   a misregistration or partial-volume artefact of the atlas, not a lesion. The candidate caps come
   from the data (:func:`hiennu.postprocessing.candidates.adc_cap_candidates`), and a cap is kept only
   when cross-validation says it helps;
2. ``min_component_voxels``: 26-connected components with fewer voxels are removed (0 or 1 keeps all);
3. ``keep_touching_rule``: only the components that overlap (share at least one voxel with) the
   rule mask ``ZADC < rule_threshold`` inside the brain (:func:`hiennu.masks.rule_mask`) are kept;
4. ``component_filter``: a lesion filter fitted by cross-validation keeps or drops each remaining
   component by its volume (mm³), extent along the slice axis (mm) and contact with the edge of the brain,
   and, when fitted so, the network's mean probability over it (:mod:`hiennu.postprocessing.lesion_filter`;
   None keeps all).

The component-size rule lives here and only here. A plans configuration may still carry a
``min_component_voxels`` (a prediction-only field, 0 unless edited); :func:`with_size_rule` is the one
place where it meets the record: the record applied removes at least the plans' components (the larger
of the two sizes), or exactly a size the user forces (``--min-component-voxels``). The predictor applies
what it returns; the selection fits and scores its candidates through it, so what was chosen is what runs.

The model folder's ``postprocessing.json`` (:class:`hiennu.paths.ModelFolder`) records the choice
(``"chosen"``) next to the evidence (each candidate's cross-validated Dice, the nested estimate, how many
candidates it was chosen among); :func:`load_postprocessing` reads it, the predictor applies it. The
choice itself is made by :func:`hiennu.postprocessing.selection.select_postprocessing`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file
from hiennu.masks import RULE_THRESHOLD, brain_mask, rule_mask
from hiennu.paths import POSTPROCESSING_FILE, ModelFolder
from hiennu.postprocessing.components import keep_components_touching, remove_small_components
from hiennu.postprocessing.lesion_filter import ComponentFilter

__all__ = ["POSTPROCESSING_FILE", "PostProcessing", "apply_postprocessing", "load_postprocessing",
           "postprocessing_from_record", "with_size_rule"]


@dataclass(frozen=True)
class PostProcessing:
    """What is done to a predicted mask (see the module docstring); the default does nothing."""

    min_component_voxels: int = 0
    keep_touching_rule: bool = False
    rule_threshold: float = RULE_THRESHOLD
    max_adc: float | None = None
    component_filter: ComponentFilter | None = None
    start_from_rule: bool = False

    @property
    def name(self) -> str:
        """A short human name: ``none``, ``ZADC<-2 components``, ``ADC <= 1400``, ``remove < 10 vox``,
        ``touch ZADC<-2``, ``lesion filter`` (``lesion filter asking the network``), joined by ``+``."""
        parts = []
        if self.start_from_rule:
            parts.append(f"ZADC<{self.rule_threshold:g} components")
        if self.max_adc is not None:
            parts.append(f"ADC <= {self.max_adc:g}")
        if self.min_component_voxels > 1:
            parts.append(f"remove < {self.min_component_voxels} vox")
        if self.keep_touching_rule:
            parts.append(f"touch ZADC<{self.rule_threshold:g}")
        if self.component_filter is not None:
            parts.append("lesion filter asking the network" if self.component_filter.needs_probabilities
                         else "lesion filter")
        return " + ".join(parts) or "none"

    @property
    def is_identity(self) -> bool:
        return (self.min_component_voxels <= 1 and not self.keep_touching_rule and self.max_adc is None
                and self.component_filter is None and not self.start_from_rule)

    @property
    def needs_adc(self) -> bool:
        """Whether it reads the case's ADC (the cap, the brain of the lesion filter and of the rule)."""
        return self.max_adc is not None or self.component_filter is not None or self.start_from_rule

    @property
    def needs_zadc(self) -> bool:
        """Whether it reads the case's ZADC (the rule's mask, or its components to touch)."""
        return self.keep_touching_rule or self.start_from_rule

    @property
    def needs_images(self) -> bool:
        """Whether it reads the case's raw channels (ZADC for the rule, ADC for the cap and the lesion filter)."""
        return self.needs_zadc or self.needs_adc

    @property
    def needs_probabilities(self) -> bool:
        """Whether it reads the network's probabilities (a lesion filter that asks the network)."""
        return self.component_filter is not None and self.component_filter.needs_probabilities

    def to_dict(self) -> dict[str, Any]:
        out = {"min_component_voxels": self.min_component_voxels, "keep_touching_rule": self.keep_touching_rule,
               "rule_threshold": self.rule_threshold, "max_adc": self.max_adc,
               "component_filter": None if self.component_filter is None else self.component_filter.to_dict()}
        # Written only when set, so the records of every other choice read exactly as before it existed (records
        # are compared as JSON when a run meets one already there).
        if self.start_from_rule:
            out["start_from_rule"] = True
        return out

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
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
            raise HiennuError(f"{source}: rule_threshold must be a finite number (ZADC z-score), got {threshold!r}")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0):
            raise HiennuError(f"{source}: max_adc must be null or a positive number (ADC, 10^-6 mm^2/s), got {cap!r}")
        start = d.get("start_from_rule", False)
        if not isinstance(start, bool):
            raise HiennuError(f"{source}: start_from_rule must be true or false, got {start!r}")
        lesion_filter = d.get("component_filter")
        lesion_filter = None if lesion_filter is None else ComponentFilter.from_dict(lesion_filter, source)
        return cls(int(k), touch, float(threshold), None if cap is None else float(cap), lesion_filter, start)


_FIELDS = ("min_component_voxels", "keep_touching_rule", "rule_threshold", "max_adc", "component_filter",
           "start_from_rule")


def apply_postprocessing(mask: np.ndarray, post: PostProcessing, zadc: np.ndarray | None = None,
                         adc: np.ndarray | None = None, spacing_zyx: Sequence[float] | None = None,
                         probabilities: np.ndarray | None = None) -> np.ndarray:
    """``mask`` (z, y, x) after ``post``; ``zadc``/``adc`` (same shape, raw values) are needed for the rule parts,
    ``adc`` for the ADC cap and the lesion filter, ``spacing_zyx`` (the case's voxel spacing in mm) for a
    lesion filter in mm (:mod:`hiennu.postprocessing.lesion_filter`), ``probabilities`` (the network's sigmoid
    probabilities, same shape) for a lesion filter that asks the network."""
    for role, image, needed in (("ZADC", zadc, post.needs_zadc), ("ADC", adc, post.needs_adc)):
        if not needed:
            continue
        if image is None:
            raise HiennuError(f"post-processing {post.name!r} needs the case's {role} image, and none was given")
        if np.shape(image) != np.shape(mask):
            raise HiennuError(f"post-processing {post.name!r}: {role} shape {np.shape(image)} differs from the "
                              f"mask's {np.shape(mask)} (both (z, y, x) on the native grid)")
    if post.start_from_rule:
        mask = rule_mask(zadc, adc, post.rule_threshold).astype(np.uint8)
    if post.max_adc is not None:
        mask = np.where(np.asarray(adc) > post.max_adc, 0, np.asarray(mask)).astype(np.uint8)
    out = remove_small_components(mask, post.min_component_voxels)
    if post.keep_touching_rule:
        out = keep_components_touching(out, rule_mask(zadc, adc, post.rule_threshold))
    if post.component_filter is not None:
        out = post.component_filter.apply(out, brain_mask(adc), spacing_zyx, probabilities)
    return out


def postprocessing_from_record(record: Any, source: str) -> PostProcessing:
    """The chosen :class:`PostProcessing` of a ``postprocessing.json`` record (already parsed)."""
    if not isinstance(record, dict) or "chosen" not in record:
        raise HiennuError(f"{source}: not a post-processing record (no 'chosen' entry); re-run the "
                          f"post-processing selection or delete the file to predict without it")
    return PostProcessing.from_dict(record["chosen"], source)


def load_postprocessing(model_dir: str | Path) -> PostProcessing | None:
    """The post-processing stored in ``model_dir/postprocessing.json``; None when there is no such file."""
    path = ModelFolder(model_dir).postprocessing
    if not path.is_file():
        return None
    record = read_json_file(path, "", "re-run the post-processing selection or delete the file")
    return postprocessing_from_record(record, str(path))


def load_record_file(path: str | Path) -> PostProcessing:
    """The chosen :class:`PostProcessing` of a ``postprocessing.json`` file given by path (it must exist)."""
    path = Path(path)
    if not path.is_file():
        raise HiennuError(f"{path}: post-processing record not found; choose one with hiennu_determine_postprocessing")
    record = read_json_file(path, "", "give the postprocessing.json written by hiennu_determine_postprocessing")
    return postprocessing_from_record(record, str(path))


def with_size_rule(post: PostProcessing | None, plans_min_component_voxels: int = 0,
                   forced: int | None = None) -> PostProcessing:
    """The post-processing as it is applied: ``post`` (None: nothing chosen) removing the components under
    the larger of its own size and the plans' ``min_component_voxels``, or under ``forced`` when given.

    The one place where the plans' size rule and the record meet (the predictor and the selection both
    go through it).
    """
    post = post or PostProcessing()
    k = int(forced) if forced is not None else max(int(plans_min_component_voxels), post.min_component_voxels)
    return replace(post, min_component_voxels=k)
