"""A lesion filter: a logistic model that keeps or drops each predicted component, fitted by cross-validation.

Most of the errors left after the ZADC rule (or a network that starts from it) and the ADC cap are
whole false-positive components: small specks, most of them one slice thick, many of them on the
rim of the skull-stripped brain, where the atlas z-score of a partial-volume voxel is low. A
component is described by three numbers, each computed on the native grid of the case:

``log_volume_mm3``
    log of its volume in mm³ (26-connected voxels times the voxel volume of the case's spacing);
``extent_z_mm``
    its extent along the slice axis (axis 0 of a ``(z, y, x)`` array) in mm: the slices it spans
    times the slice spacing, so a one-slice speck of a 6 mm-thick scan and of a 2 mm-thick one differ;
``outside_shell``
    the share of its one-voxel outer shell (26-neighbours not in the component) that lies outside
    the brain (``ADC == 0``, or beyond the edge of the volume), from 0 (deep inside) to 1.

Physical units keep one filter meaningful across cases whose spacings run from 0.7 to 6 mm. Filters
stored before (features ``log_voxels`` and ``slices``, in voxels and slices) still load and apply
as they were fitted (:data:`LEGACY_FEATURES`).

A filter may also ask the network (:data:`FEATURES_WITH_PROBABILITY`): a fourth feature,

``mean_probability``
    the mean of the network's sigmoid probability (0-1, on the native grid) over the component,

so that the network judges whole components rather than voxels (the "judged-rule" post-processing of
:mod:`hiennu.postprocessing.candidates`). Such a filter needs the probabilities wherever it is fitted or
applied: the models' cross-validation probabilities (``hiennu_train --npz``) and the predictor's own.

The filter is a logistic regression on the standardized features; a component is kept when its
probability of overlapping a reference lesion is at least ``threshold``. It is fitted on the pooled
cross-validation predictions of a model's training cases (each component labelled by whether it
touches the reference) after the same steps that come before it at prediction (the ADC cap and
the size rule, :func:`hiennu.postprocessing.record.apply_postprocessing`), and the threshold is the one of a fixed grid that maximizes the mean
per-case Dice of those cases. Like the other post-processing, it is kept only when cross-validation
says it helps (:mod:`hiennu.postprocessing.selection`).

Written here rather than taken from scikit-learn, which is not a dependency: an L2-penalized
logistic regression on three or four features is a few lines around :func:`scipy.optimize.minimize`
(L-BFGS with the analytic gradient); a fit that does not converge is logged as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage, optimize, special

from hiennu.errors import HiennuError
from hiennu.log import get_logger
from hiennu.masks import FULL_CONNECTIVITY, dice

log = get_logger(__name__)

FEATURES = ("log_volume_mm3", "extent_z_mm", "outside_shell")
LEGACY_FEATURES = ("log_voxels", "slices", "outside_shell")  # filters stored before the features were in mm
PROBABILITY_FEATURE = "mean_probability"
FEATURES_WITH_PROBABILITY = FEATURES + (PROBABILITY_FEATURE,)  # the network judges each component too
FEATURE_SETS = (FEATURES, LEGACY_FEATURES, FEATURES_WITH_PROBABILITY)
MAX_ITERATIONS = 1000
THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.05, 0.8, 16), 2))
L2_PENALTY = 1.0


def check_spacing(spacing_zyx: Sequence[float] | None, features: Sequence[str] = FEATURES) -> tuple[float, ...] | None:
    """The spacing ``(z, y, x)`` in mm as three floats; None for :data:`LEGACY_FEATURES`, which need none.
    A missing or bad spacing for the mm features raises :class:`HiennuError`."""
    if tuple(features) == LEGACY_FEATURES:
        return None
    if spacing_zyx is None:
        raise HiennuError("lesion filter: its features are in mm (log_volume_mm3, extent_z_mm) and need the case's "
                          "voxel spacing (z, y, x) in mm; none was given")
    values = tuple(float(v) for v in spacing_zyx)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise HiennuError(f"lesion filter: spacing (z, y, x) must be 3 positive mm values, got {tuple(spacing_zyx)}")
    return values


def check_probabilities(probabilities: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """``probabilities`` as float32 when given with ``shape`` ``(z, y, x)``; otherwise :class:`HiennuError` saying
    what is wrong (a filter with ``mean_probability`` needs the network's map). Their values are checked where they
    are read (:func:`check_probability_values`): a full scan on every call would be repeated for each candidate
    and case of a choice."""
    if probabilities is None:
        raise HiennuError(f"lesion filter: its feature {PROBABILITY_FEATURE} needs the network's probabilities on the "
                          f"case's native grid, and none were given (the rule and masks alone cannot be judged; "
                          f"predict with a model, or keep the validation probabilities with hiennu_train --npz)")
    values = np.asarray(probabilities, dtype=np.float32)
    if values.shape != tuple(shape):
        raise HiennuError(f"lesion filter: probabilities of shape {values.shape} differ from the mask's {tuple(shape)} "
                          f"(both (z, y, x) on the native grid)")
    return values


def check_probability_values(values: np.ndarray) -> np.ndarray:
    """``values`` when they are finite and in [0, 1]; otherwise :class:`HiennuError`."""
    if not np.isfinite(values).all() or values.min(initial=0.0) < 0 or values.max(initial=0.0) > 1:
        raise HiennuError("lesion filter: the network's probabilities must be finite values in [0, 1]")
    return values


def component_features(mask: np.ndarray, brain: np.ndarray, spacing_zyx: Sequence[float] | None = None,
                       features: Sequence[str] = FEATURES,
                       probabilities: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected components of ``mask`` and their features.

    mask, brain: boolean-like arrays ``(z, y, x)`` of one shape (brain: where ``ADC != 0``);
    spacing_zyx: the voxel spacing in mm, needed by the mm features (:data:`FEATURES`);
    features: :data:`FEATURES`, :data:`LEGACY_FEATURES` (voxels and slices, no spacing) or
    :data:`FEATURES_WITH_PROBABILITY`; probabilities: the network's sigmoid probabilities ``(z, y, x)``, needed
    by the last (ignored otherwise).
    Returns ``labels`` (int array, 0 = background, components numbered from 1) and ``features``
    (float64 ``(n_components, len(features))``, columns in ``features`` order).
    """
    if tuple(features) not in FEATURE_SETS:
        raise HiennuError(f"lesion filter: features {list(features)} are not one of {[list(f) for f in FEATURE_SETS]}")
    spacing = check_spacing(spacing_zyx, features)
    mask = np.asarray(mask).astype(bool, copy=False)
    brain = np.asarray(brain).astype(bool, copy=False)
    if mask.shape != brain.shape:
        raise HiennuError(f"lesion filter: mask shape {mask.shape} differs from the brain's {brain.shape} "
                          f"(both (z, y, x) on the native grid)")
    with_probability = PROBABILITY_FEATURE in features
    if with_probability:
        probabilities = check_probabilities(probabilities, mask.shape)
    labels = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return labels, np.zeros((0, len(features)), dtype=np.float64)
    # Label only the box around the mask, one voxel wider where the volume allows: every shell lies inside it.
    nonzero = np.nonzero(mask)
    box = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in nonzero)
    labels[box], n = ndimage.label(mask[box], structure=FULL_CONNECTIVITY)
    out = np.zeros((n, len(features)), dtype=np.float64)
    # One voxel of "outside" around the box, so a shell cut by the volume's edge counts as outside (the pad is
    # reached only where the box ends at the volume's edge).
    padded_labels = np.pad(labels[box], 1)
    padded_brain = np.pad(brain[box], 1)
    voxel_mm3 = float(np.prod(spacing)) if spacing is not None else 1.0
    slice_mm = spacing[0] if spacing is not None else 1.0
    for i, component_box in enumerate(ndimage.find_objects(padded_labels), start=1):
        window = tuple(slice(s.start - 1, s.stop + 1) for s in component_box)
        component = padded_labels[window] == i
        shell = ndimage.binary_dilation(component, FULL_CONNECTIVITY) & ~component
        out[i - 1, :3] = (np.log(component.sum() * voxel_mm3), np.unique(np.nonzero(component)[0]).size * slice_mm,
                          1.0 - padded_brain[window][shell].mean())
    if with_probability:
        out[:, 3] = ndimage.mean(check_probability_values(probabilities[box]), labels[box], np.arange(1, n + 1))
    return labels, out


@dataclass(frozen=True)
class ComponentFilter:
    """A fitted lesion filter (see the module docstring).

    mean, scale: per-feature standardization; weights, bias: the logistic model on standardized features;
    threshold: the probability a component needs to be kept; features: the feature names the numbers
    belong to (:data:`FEATURES`, in mm; :data:`FEATURES_WITH_PROBABILITY`, which also asks the network; or a
    stored filter's :data:`LEGACY_FEATURES`).
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    features: tuple[str, ...] = FEATURES

    @property
    def needs_probabilities(self) -> bool:
        """Whether it reads the network's probabilities (feature ``mean_probability``)."""
        return PROBABILITY_FEATURE in self.features

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Probability of each component (rows of ``features``) overlapping a lesion (the logistic function,
        computed without overflow for any logit)."""
        z = (np.asarray(features, np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return special.expit(z @ np.asarray(self.weights) + self.bias)

    def keep(self, features: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Boolean per component: kept at ``threshold`` (default: the filter's own)."""
        return self.probabilities(features) >= (self.threshold if threshold is None else threshold)

    def apply(self, mask: np.ndarray, brain: np.ndarray, spacing_zyx: Sequence[float] | None = None,
              probabilities: np.ndarray | None = None) -> np.ndarray:
        """``mask (z, y, x)`` with only its kept components; uint8 {0, 1}. spacing_zyx: the case's voxel
        spacing in mm (needed unless the filter is a stored one in voxels, :data:`LEGACY_FEATURES`);
        probabilities: the network's sigmoid probabilities ``(z, y, x)`` (needed when :attr:`needs_probabilities`)."""
        labels, features = component_features(mask, brain, spacing_zyx, self.features, probabilities)
        keep = np.concatenate([[False], self.keep(features)])
        return keep[labels].astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "bias": self.bias, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "ComponentFilter":
        fix = "re-run the post-processing selection"
        if not isinstance(d, dict):
            raise HiennuError(f"{source}: component_filter must be null or an object, got {d!r}; {fix}")
        names = d.get("features")
        if not isinstance(names, list) or tuple(names) not in FEATURE_SETS:
            raise HiennuError(f"{source}: component_filter features {names!r}, this hiennu knows "
                              f"{list(FEATURES)}, {list(FEATURES_WITH_PROBABILITY)} (or the older "
                              f"{list(LEGACY_FEATURES)}); {fix}")
        vectors = {}
        for key in ("mean", "scale", "weights"):
            v = d.get(key)
            if (not isinstance(v, list) or len(v) != len(names)
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)):
                raise HiennuError(f"{source}: component_filter {key} must be {len(names)} finite numbers (one per "
                                  f"feature), got {v!r}")
            vectors[key] = tuple(float(x) for x in v)
        if not all(s > 0 for s in vectors["scale"]):
            raise HiennuError(f"{source}: component_filter scale must be positive, got {list(vectors['scale'])}")
        bias, threshold = d.get("bias"), d.get("threshold")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not np.isfinite(bias):
            raise HiennuError(f"{source}: component_filter bias must be a finite number, got {bias!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise HiennuError(f"{source}: component_filter threshold must be a probability in (0, 1), "
                              f"got {threshold!r}")
        return cls(vectors["mean"], vectors["scale"], vectors["weights"], float(bias), float(threshold),
                   tuple(names))


@dataclass
class FilterCase:
    """One case to fit on: a predicted mask (after the steps that precede the filter at prediction), the
    brain and the reference, all boolean ``(z, y, x)``, the voxel spacing ``(z, y, x)`` in mm, and the network's
    sigmoid probabilities ``(z, y, x)`` (needed only for :data:`FEATURES_WITH_PROBABILITY`)."""

    mask: np.ndarray
    brain: np.ndarray
    ref: np.ndarray
    spacing_zyx: Sequence[float] | None = None
    probabilities: np.ndarray | None = None


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float,
                  max_iterations: int = MAX_ITERATIONS) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-penalized logistic regression (x standardized, y in {0, 1}).

    A fit whose optimizer reports no convergence is kept (the selection still scores it by
    cross-validation) and logged as a warning with the optimizer's message.
    """
    design = np.c_[x, np.ones(len(x))]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = design @ w
        value = np.mean(np.logaddexp(0.0, s) - y * s) + l2 * np.sum(w[:-1] ** 2) / len(x)
        grad = design.T @ (special.expit(s) - y) / len(x)
        grad[:-1] += 2.0 * l2 * w[:-1] / len(x)
        return value, grad

    result = optimize.minimize(loss, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B",
                               options={"maxiter": int(max_iterations)})
    if not result.success:
        log.warning("lesion filter: the logistic fit on %d components did not converge after %d iterations (%s); "
                    "the filter is kept as it stands and cross-validation judges it", len(x), result.nit,
                    result.message)
    w = result.x
    return w[:-1], float(w[-1])


def fit_component_filter(cases: Sequence[FilterCase], thresholds: Sequence[float] = THRESHOLDS,
                         l2: float = L2_PENALTY, max_iterations: int = MAX_ITERATIONS,
                         features: Sequence[str] = FEATURES) -> ComponentFilter | None:
    """Fit the filter on ``cases``; None when their components are all lesions or all false positives.

    features: :data:`FEATURES`, or :data:`FEATURES_WITH_PROBABILITY` (every case then needs its probabilities).

    Each case's mask must already have been through what precedes the filter at prediction (ADC cap,
    size rule), so the filter learns on the components it will see. Each of its components (features
    in mm, so every case needs its spacing) is labelled 1 when it shares a voxel with the reference. The
    threshold is the one of ``thresholds`` with the highest mean per-case Dice over ``cases`` (ties:
    the lowest, which keeps the most).
    """
    per_case = []
    for c in cases:
        labels, x = component_features(c.mask, c.brain, c.spacing_zyx, features, c.probabilities)
        touches = np.zeros(x.shape[0], dtype=bool)
        hit = np.unique(labels[np.asarray(c.ref, bool) & (labels > 0)])
        touches[hit - 1] = True
        per_case.append((labels, x, touches))
    x = np.concatenate([f for _, f, _ in per_case]) if per_case else np.zeros((0, len(features)))
    y = np.concatenate([t for _, _, t in per_case]).astype(np.float64) if per_case else np.zeros(0)
    if y.size == 0 or y.min() == y.max():
        return None
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    weights, bias = _logistic_fit((x - mean) / scale, y, l2, max_iterations)
    model = ComponentFilter(tuple(mean), tuple(scale), tuple(float(w) for w in weights), bias, 0.5, tuple(features))
    scores = []
    for t in thresholds:
        total = 0.0
        for c, (labels, x_case, _) in zip(cases, per_case):
            keep = np.concatenate([[False], model.keep(x_case, t)])
            total += dice(c.ref, keep[labels])
        scores.append(total / len(cases))
    best = float(thresholds[int(np.argmax(scores))])
    return ComponentFilter(model.mean, model.scale, model.weights, model.bias, best, tuple(features))
