"""A planner that heeds its own round-trip check: refine ``3d_fullres``'s target spacing when the label
round trip at nnU-Net's spacing loses lesions, within the machine's budget, or say plainly what is lost.

All spacings are mm in numpy order (z, y, x); sizes are voxels (z, y, x).

nnU-Net's spacing (:mod:`~hiennu.planning.spacing`) follows the median case. Cases finer than it lose
detail on the way to the grid: a lesion of one or two native voxels can vanish before training starts.
The planner measures the label round trip (brain crop -> target spacing -> back, nearest neighbour,
:func:`~hiennu.planning.roundtrip.measure_crop_roundtrip`). When its mean is below
:data:`ROUNDTRIP_MEAN_MIN` or its worst case below :data:`ROUNDTRIP_WORST_MIN`:

1. Candidates (:func:`candidate_spacings`): per axis, step toward the :data:`REFINEMENT_PERCENTILES`
   of the case spacings in turn (25th, 10th, 5th, then the finest case), by a factor :data:`STEP_FACTOR`
   per step, or straight to the percentile when a step would land within :data:`SNAP` of it (so one
   step shrinks an axis by a factor between ``STEP_FACTOR / (1 + SNAP)`` and 1); an axis never becomes
   coarser.
2. Budget (:func:`budget_problem`): each candidate re-plans the patch, network and batch for the device
   (:func:`~hiennu.planning.topology.plan_patch`). It is within budget when the plan fits the device
   (GPU memory) and the median brain box at that spacing holds at most :data:`MAX_BOX_PATCH_RATIO`
   times the patch's voxels (nnU-Net adds a ``3d_lowres`` configuration below this coverage: a patch
   under a quarter of the median image sees too little context). The first candidate over budget ends
   the search (finer ones are larger still); so does :data:`MAX_REFINEMENT_STEPS`.
3. Each candidate within budget is measured; the search stops as soon as both thresholds hold.
4. The best attempt is kept (both thresholds met, then the higher mean, then the higher worst case).
   Every attempt (spacing, mean, worst) is written into the configuration's ``notes`` and the log; when
   the kept spacing still misses a threshold, both name the cases that lose most (case id, native
   spacing, lesion voxels, round-trip Dice) and the flag that forces a finer spacing
   (``--target-spacing Z Y X``).

A forced spacing (:func:`force_spacing`, ``grid_policy`` ``forced``) is never refined; its round trip is
still measured and reported the same way (:func:`heed_roundtrip` with ``forced=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.log import get_logger
from hiennu.planning.fingerprint import DatasetFingerprint
from hiennu.planning.planner import choose_normalization, plan_patch_configuration
from hiennu.planning.roundtrip import RoundTrip
from hiennu.plans import Configuration

log = get_logger(__name__)

ROUNDTRIP_MEAN_MIN = 0.99  # mean label round-trip Dice below this triggers refinement
ROUNDTRIP_WORST_MIN = 0.9  # so does a worst case below this
REFINEMENT_PERCENTILES = (25.0, 10.0, 5.0, 0.0)  # per-axis percentiles of the case spacings, stepped toward in turn
STEP_FACTOR = 0.8  # one step shrinks an axis's spacing by at most this factor (about 2x the voxels per step)
SNAP = 0.1  # a step landing within 10 % of the percentile goes to it
MAX_BOX_PATCH_RATIO = 4.0  # median brain box at most this many patches of voxels (nnU-Net's 3d_lowres threshold)
MAX_REFINEMENT_STEPS = 8  # refined spacings measured at most
WORST_CASES_SHOWN = 5  # cases named in the notes when the kept spacing still loses
FLAG = "--target-spacing"

Measure = Callable[[Sequence[float]], RoundTrip]


@dataclass
class SpacingAttempt:
    """One measured target spacing (mm, z y x): its round trip and the patch planned for it."""

    spacing_zyx: list[float]
    label: str
    roundtrip: RoundTrip
    config: Configuration

    @property
    def meets(self) -> bool:
        return meets_thresholds(self.roundtrip)

    def rank(self) -> tuple[int, float, float]:
        """Ordering of attempts: thresholds met, then mean, then worst case (higher is better)."""
        trip = self.roundtrip
        return (int(trip.mean >= ROUNDTRIP_MEAN_MIN) + int(trip.worst >= ROUNDTRIP_WORST_MIN), trip.mean, trip.worst)

    def describe(self) -> str:
        return (f"{_mm(self.spacing_zyx)} mm ({self.label}): mean {self.roundtrip.mean:.4f}, "
                f"worst {self.roundtrip.worst:.4f}, patch {self.config.patch_size_zyx}")


def meets_thresholds(trip: RoundTrip) -> bool:
    """Both the mean and the worst-case round-trip Dice at or above their thresholds."""
    return trip.mean >= ROUNDTRIP_MEAN_MIN and trip.worst >= ROUNDTRIP_WORST_MIN


def validate_target_spacing(values: Sequence[float] | None) -> list[float] | None:
    """``--target-spacing`` as three positive finite floats (mm, z y x), or a one-line error."""
    if values is None:
        return None
    try:
        spacing = [float(v) for v in values]
    except (TypeError, ValueError):
        spacing = []
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise HiennuError(f"{FLAG} needs three positive spacings in mm (z y x), got {list(values)}")
    return spacing


def candidate_spacings(case_spacings_zyx: Sequence[Sequence[float]], start_zyx: Sequence[float]) -> list[list[float]]:
    """Refined spacings to try after ``start_zyx``, coarsest first (module docstring, step 1).

    case_spacings_zyx: every case's native spacing (mm, z y x).
    """
    spacings = np.asarray(case_spacings_zyx, float)
    current = np.asarray(start_zyx, float)
    out: list[list[float]] = []
    for percentile in REFINEMENT_PERCENTILES:
        goal = np.minimum(current, np.percentile(spacings, percentile, axis=0))
        while np.any(current > goal * (1 + 1e-6)):
            step = current * STEP_FACTOR
            current = np.where(step <= goal * (1 + SNAP), goal, np.maximum(step, goal))
            out.append([float(round(v, 6)) for v in current])
    return out


def median_box_at(fp: DatasetFingerprint, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Median brain box (voxels, z y x) of the cases once resampled to ``spacing_zyx``."""
    boxes = np.asarray([c.brain_box_zyx for c in fp.cases], float)
    spacings = np.asarray([c.spacing_zyx for c in fp.cases], float)
    return np.median(boxes * spacings / np.asarray(spacing_zyx, float), axis=0)


def box_patch_ratio(fp: DatasetFingerprint, config: Configuration) -> float:
    """Voxels of the median brain box at the configuration's spacing over the voxels of its patch."""
    return float(np.prod(median_box_at(fp, config.target_spacing_zyx)) / np.prod(config.patch_size_zyx))


def replan_at(fp: DatasetFingerprint, config: Configuration, spacing_zyx: Sequence[float], reason: str,
              gpu_memory_gb: float, grid_policy: str = "spacing") -> Configuration:
    """``config`` (a ``3d_fullres``) planned again at ``spacing_zyx``: patch, network and batch for its device.

    Normalization, device and precision are kept; raises :class:`HiennuError` when the device cannot
    hold the plan (a GPU patch over ``gpu_memory_gb``).
    """
    reasons = [choose_normalization(i, n.channel_name, fp)[1] for i, n in enumerate(config.normalization)]
    return plan_patch_configuration(fp, list(config.normalization), reasons, config.planned_for, gpu_memory_gb,
                                    cpu_bf16=config.training.cpu_bf16, spacing=(list(spacing_zyx), reason),
                                    grid_policy=grid_policy)


def force_spacing(fp: DatasetFingerprint, config: Configuration, spacing_zyx: Sequence[float],
                  gpu_memory_gb: float) -> Configuration:
    """``config`` re-planned at the spacing given with ``--target-spacing`` (``grid_policy`` ``forced``)."""
    spacing = validate_target_spacing(spacing_zyx)
    log.info("%s: target spacing %s mm (z y x) forced by %s", config.name, _mm(spacing), FLAG)
    return replan_at(fp, config, spacing, f"{_mm(spacing)} mm (z y x), forced by {FLAG}", gpu_memory_gb, "forced")


def budget_problem(fp: DatasetFingerprint, config: Configuration, spacing_zyx: Sequence[float],
                   gpu_memory_gb: float) -> tuple[Configuration | None, str]:
    """(``config`` re-planned at ``spacing_zyx``, "") when within budget, else (None, why not).

    config: the configuration planned at nnU-Net's spacing (named in the reason).
    """
    reason = (f"{_mm(spacing_zyx)} mm (z y x), refined from nnU-Net's {_mm(config.target_spacing_zyx)} mm, where the "
              f"label round trip lost lesions (the round-trip notes below)")
    try:
        planned = replan_at(fp, config, spacing_zyx, reason, gpu_memory_gb)
    except HiennuError as err:
        return None, f"{_mm(spacing_zyx)} mm does not fit the device: {err}"
    ratio = box_patch_ratio(fp, planned)
    if ratio > MAX_BOX_PATCH_RATIO:
        box = [round(float(v)) for v in median_box_at(fp, spacing_zyx)]
        return None, (f"{_mm(spacing_zyx)} mm is over the budget: its median brain box {box} holds {ratio:.1f} "
                      f"times the voxels of its patch {planned.patch_size_zyx} (at most {MAX_BOX_PATCH_RATIO:g}, "
                      f"nnU-Net's 3d_lowres threshold)")
    return planned, ""


def heed_roundtrip(fp: DatasetFingerprint, config: Configuration, measure: Measure, gpu_memory_gb: float,
                   forced: bool = False) -> tuple[Configuration, RoundTrip]:
    """Measure ``config``'s round trip and refine its spacing when it loses lesions (module docstring).

    measure: target spacing (mm, z y x) -> the round trip of every training case at that spacing.
    forced: the spacing was forced (``--target-spacing``): measure and report, never refine.
    Returns the kept configuration (its ``notes`` extended) and its round trip.
    """
    start = SpacingAttempt(list(config.target_spacing_zyx), "forced" if forced else "nnU-Net's rule",
                           measure(config.target_spacing_zyx), config)
    _log_attempt(config.name, start)
    if start.meets:
        _add_note(config, f"label round trip at {_mm(start.spacing_zyx)} mm: mean {start.roundtrip.mean:.4f}, "
                          f"worst {start.roundtrip.worst:.4f}, at or above the thresholds (mean "
                          f"{ROUNDTRIP_MEAN_MIN:g}, worst {ROUNDTRIP_WORST_MIN:g}): spacing kept")
        return config, start.roundtrip
    if forced:
        _add_note(config, _shortfall_note(fp, start, [start], f"{FLAG} forced it"))
        return config, start.roundtrip
    attempts, stop = _refine(fp, config, start, measure, gpu_memory_gb)
    best = max(attempts, key=SpacingAttempt.rank)
    kept = best.config
    if best.meets:
        _add_note(kept, _refined_note(attempts, best, stop))
        log.info("%s: target spacing refined to %s mm (z y x): round trip mean %.4f, worst %.4f", config.name,
                 _mm(best.spacing_zyx), best.roundtrip.mean, best.roundtrip.worst)
    else:
        _add_note(kept, _shortfall_note(fp, best, attempts, stop))
    if best is not start:
        _add_note(kept, _coverage(fp, kept))
        log.info("%s: %s", config.name, _coverage(fp, kept))
    return kept, best.roundtrip


def _refine(fp: DatasetFingerprint, config: Configuration, start: SpacingAttempt, measure: Measure,
            gpu_memory_gb: float) -> tuple[list[SpacingAttempt], str]:
    """Measure refined candidates until both thresholds hold or the budget ends; (attempts, why it stopped)."""
    attempts = [start]
    candidates = candidate_spacings([c.spacing_zyx for c in fp.cases], start.spacing_zyx)
    for index, spacing in enumerate(candidates):
        if index == MAX_REFINEMENT_STEPS:
            return attempts, f"the limit of {MAX_REFINEMENT_STEPS} refinement steps was reached"
        planned, problem = budget_problem(fp, config, spacing, gpu_memory_gb)
        if planned is None:
            log.info("%s: refinement stops: %s", config.name, problem)
            return attempts, f"the next candidate, {problem}"
        attempt = SpacingAttempt(spacing, f"step {index + 1}", measure(spacing), planned)
        attempts.append(attempt)
        _log_attempt(config.name, attempt)
        if attempt.meets:
            return attempts, "both thresholds hold"
    return attempts, "the finest case spacing per axis was reached"


def worst_cases(fp: DatasetFingerprint, trip: RoundTrip, limit: int = WORST_CASES_SHOWN) -> list[str]:
    """The cases that lose most in ``trip``, worst first: id, native spacing, lesion voxels, Dice."""
    cases = {c.case_id: c for c in fp.cases}
    losing = sorted((d, i) for i, d in trip.dice_per_case.items() if d < 1.0)[:limit]
    out = []
    for dice, case_id in losing:
        case = cases.get(case_id)
        about = f" (native {_mm(case.spacing_zyx)} mm, {case.lesion_voxels} lesion voxels)" if case else ""
        out.append(f"{case_id}{about}: Dice {dice:.4f}")
    return out


def _shortfall_note(fp: DatasetFingerprint, kept: SpacingAttempt, attempts: list[SpacingAttempt], stop: str) -> str:
    """The plain statement when the kept spacing still misses a threshold; also logged as a warning."""
    trip = kept.roundtrip
    text = _shortfall_text(fp, trip, f"kept {_mm(kept.spacing_zyx)} mm (z y x) with mean {trip.mean:.4f}, worst "
                                     f"{trip.worst:.4f}; attempts: {' | '.join(a.describe() for a in attempts)} "
                                     f"(stopped because {stop})", "To force a finer spacing")
    log.warning("%s: %s", kept.config.name, text)
    return text


def state_shortfall(fp: DatasetFingerprint, config: Configuration, trip: RoundTrip, source: str) -> None:
    """For a configuration whose spacing comes from another's (the ``2d`` takes ``source``'s in-plane spacing, and
    is not refined on its own): when its label round trip misses a threshold, say so in its notes and as a warning,
    naming the cases that lose most and how to force a finer spacing."""
    if trip.mean >= ROUNDTRIP_MEAN_MIN and trip.worst >= ROUNDTRIP_WORST_MIN:
        return
    spacing = config.resampling_spacing_zyx
    shown = " x ".join("native" if v is None else f"{float(v):.4g}" for v in spacing) if spacing else "its grid"
    text = _shortfall_text(fp, trip, f"{config.name} at {shown} mm (z y x) has mean {trip.mean:.4f}, worst "
                                     f"{trip.worst:.4f}", f"Its spacing follows {source}'s: to force a finer one")
    log.warning("%s: %s", config.name, text)
    _add_note(config, text)


def _shortfall_text(fp: DatasetFingerprint, trip: RoundTrip, what: str, force: str) -> str:
    below = sum(d < ROUNDTRIP_WORST_MIN for d in trip.dice_per_case.values())
    finest = [float(v) for v in np.min([c.spacing_zyx for c in fp.cases], axis=0)]
    return (f"LABEL ROUND TRIP BELOW THE THRESHOLDS (mean {ROUNDTRIP_MEAN_MIN:g}, worst {ROUNDTRIP_WORST_MIN:g}): "
            f"{what}; {below} of {len(trip.dice_per_case)} cases under {ROUNDTRIP_WORST_MIN:g}, those losing most: "
            f"{', '.join(worst_cases(fp, trip)) or 'none'}; their lesions are partly lost before training starts. "
            f"{force}, re-plan with {FLAG} Z Y X (mm, z y x), e.g. {FLAG} "
            f"{' '.join(f'{v:g}' for v in finest)} (the finest case spacing per axis), at the cost of a patch "
            f"that covers less of the brain and more windows per case")


def _refined_note(attempts: list[SpacingAttempt], best: SpacingAttempt, stop: str) -> str:
    first = attempts[0]
    return (f"label round trip at nnU-Net's {_mm(first.spacing_zyx)} mm was mean {first.roundtrip.mean:.4f}, worst "
            f"{first.roundtrip.worst:.4f}, below the thresholds (mean {ROUNDTRIP_MEAN_MIN:g}, worst "
            f"{ROUNDTRIP_WORST_MIN:g}), so the spacing was refined toward the finer case spacings: attempts "
            f"{' | '.join(a.describe() for a in attempts)} (stopped because {stop}): kept {_mm(best.spacing_zyx)} mm "
            f"(z y x)")


def _coverage(fp: DatasetFingerprint, config: Configuration) -> str:
    """Whether the patch planned at the refined spacing still covers the median brain box: say so."""
    box = median_box_at(fp, config.target_spacing_zyx)
    patch = config.patch_size_zyx
    shown = [round(float(v)) for v in box]
    if all(p >= b for p, b in zip(patch, box)):
        return f"at the refined spacing the patch {patch} (z y x) still covers the median brain box {shown}"
    return (f"at the refined spacing the patch {patch} (z y x) no longer covers the median brain box {shown} "
            f"(the box holds {box_patch_ratio(fp, config):.1f} patches of voxels): training sees parts of the "
            f"brain and prediction takes several windows per case")


def _add_note(config: Configuration, text: str) -> None:
    config.notes = f"{config.notes}; {text}" if config.notes else text


def _log_attempt(name: str, attempt: SpacingAttempt) -> None:
    log.info("%s: label round trip at %s", name, attempt.describe())


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.4g}" for v in values)
