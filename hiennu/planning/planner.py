"""The planner: dataset fingerprint -> :class:`~hiennu.plans.Plans` (four configurations).

- ``3d_fullres`` (default, nnU-Net's meaning): crop each case to its brain box, resample to the
  planned spacing (:mod:`~hiennu.planning.spacing`), train on patches and predict with a sliding
  window. The patch, pooling, widths and batch are sized for the device that will train
  (:mod:`~hiennu.planning.topology`): ``plan_for`` ``cpu`` or ``gpu`` (default: ``gpu`` when torch sees
  CUDA, else ``cpu``). Normalization per channel as below.
- ``2d`` (nnU-Net's meaning): the same brain crop and in-plane spacing, each case's own slices, a 2D
  network on one-slice patches with a batch of slices sized for the same device
  (:func:`plan_2d_configuration`); normalization, rule prior and precision as ``3d_fullres``.
- ``3d_paper``: the paper's recipe. Grid by the mean-size rule (:func:`~hiennu.planning.grid.paper_grid`),
  every channel z-scored over its own resampled image, labels nearest neighbour, the paper's
  training and augmentation values.
- ``3d_lossless``: the whole volume on one fixed grid chosen by ``grid_policy`` (``memory``: the largest grid up to the lossless
  one that fits ``gpu_memory_gb``; ``paper``: the mean-size rule), normalization chosen per channel
  from its ``dataset.json`` name, like nnU-Net:
    ADC (name contains "ADC", not a z-map) -> ``global_zscore`` (clip at the fingerprint's 0.5 / 99.5
    brain percentiles, dataset mean and std); ZADC (name contains "ZADC" or starts with "Z") ->
    ``atlas_zscore`` (clip to [-10, 10], unit scale kept); anything else -> ``zscore_brain``.
- ``target_size_xyz`` given: every whole-volume configuration uses that grid (``grid_policy`` "forced").

The round-trip ceiling is filled in afterwards by :func:`record_roundtrip`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from hiennu import __version__
from hiennu.device import cpu_has_native_bf16
from hiennu.errors import HiennuError
from hiennu.log import get_logger
from hiennu.io.channels import ADC, ZADC, channel_index
from hiennu.masks import RULE_THRESHOLD
from hiennu.planning.fingerprint import DatasetFingerprint
from hiennu.planning.grid import grid_unit, lossless_grid, memory_grid, paper_grid
from hiennu.planning.memory import estimate_training_memory
from hiennu.planning.roundtrip import RoundTrip
from hiennu.planning.spacing import plan_target_spacing
from hiennu.planning.topology import PLAN_FOR, plan_patch, plan_slice_patch
from hiennu.plans import (DEFAULT_CONFIGURATION, LOSSLESS_CONFIGURATION, PAPER_CONFIGURATION, SLICE_CONFIGURATION,
                          AugmentationPlan, ChannelNormalization, Configuration, NetworkPlan, Plans,
                          TrainingPlan)

log = get_logger(__name__)

GRID_POLICIES = ("memory", "paper")
DEFAULT_GPU_MEMORY_GB = 16.0
ZADC_CLIP = 10.0
PREDICTION_NOTE = ("probabilities back to the native grid by nearest neighbour: on the 37 BONBID dev cases it "
                   "matched or beat linear at every grid (documentation/inference.md)")
# The sliding window of the patch configurations (plans.Configuration.inference_window): one window over a case that
# overhangs the patch when that is cheaper (hiennu.windows.case_window); chosen on the 37 BONBID dev cases by 5-fold CV
# (documentation/results.md, session 48).
INFERENCE_WINDOW = "case"
INFERENCE_WINDOW_NOTE = ("sliding window: one window over the whole brain box when the case overhangs the patch and that "
                         "window costs fewer voxels than the patch windows (at most two patches; inference_window case, "
                         "'patch' for nnU-Net's windows of the patch): on the 37 BONBID dev cases 56 windows became the "
                         "voxels of 39 (documentation/results.md, session 48)")
# A patch epoch (iterations) and the schedule of the patch configuration, per device. The CPU schedule
# is 200 steps (about 11 min a fold on 2 cores at ~2.3 s a step, validation included, so five folds take
# about an hour); the GPU one is nnU-Net's 250-step epoch.
PATCH_SCHEDULE = {"cpu": {"iterations_per_epoch": 20, "max_epochs": 10, "patience": 10},
                  "gpu": {"iterations_per_epoch": 250, "max_epochs": 100, "patience": 15}}
PATCH_MIRROR_AXES = [2]  # the array's x axis, left-right in BONBID's images (chosen from each dataset's directions)
# the smallest |cosine| between an array axis and world left-right for it to count as the left-right axis (45 degrees)
LEFT_RIGHT_ALIGNMENT = 0.7
# The 2d configuration's schedule: a step costs a fraction of a 3D one, so many more of them (CPU: 1000
# steps, about 40 min for five folds in bf16 on 2 cores, documentation/results.md); the GPU one is nnU-Net's.
SLICE_SCHEDULE = {"cpu": {"iterations_per_epoch": 50, "max_epochs": 20, "patience": 20},
                  "gpu": {"iterations_per_epoch": 250, "max_epochs": 100, "patience": 100}}
# nnU-Net's 2d: single slices, a third of them centred on lesions, and batch Dice. With a per-sample Dice the
# single slices drifted below the rule on BONBID fold 0 (0.57 -> 0.39 grid Dice; a lesion-free slice scores 1
# unless emptied), and slabs of 16 slices stayed flat at the rule; with batch Dice five folds scored level
# with 3d_fullres at half its training time (documentation/results.md, session 21).
SLICE_FOREGROUND = 0.33
SLICE_BATCH_DICE = True
# Without a z-map channel: nnU-Net's foreground share and the paper's learning rate. With one, the
# network starts from the ZADC < -2 rule (a logit prior it may mostly only veto) with fewer
# lesion-centred patches: on fold 0 of the 37 BONBID dev cases this scored Dice 0.52 against 0.20 for
# the plain network after twice the steps. A sharp prior (k = 10 logits per unit of z-score, so the
# soft prediction is the rule's too) with AdamW 1e-3 and poly decay beat the gentler k = 2 with 3e-4
# by 5-fold CV on those cases (0.580 vs 0.568 Dice with the chosen post-processing; results.md).
# k = 10 saturates the sigmoid deep inside the rule (a voxel at ZADC -4 starts at 20 logits, gradient 0 in
# float32), so the network can only move voxels near the threshold; k = 1 lets `2d` learn to veto anywhere
# (its training loss fell from 0.85 to 0.35 in 1000 steps, where k = 10's stayed flat) but it vetoed true
# lesions of the validation cases: 0.412 Dice by 5-fold CV against 0.476 at k = 10 (results.md, session 22).
PATCH_FOREGROUND = 0.33
PRIOR_FOREGROUND = 0.1
PRIOR_LEARNING_RATE = 1e-3
PRIOR_LR_SCHEDULE = "poly"
PRIOR_SCALE = 10.0
# With the prior, no L1 penalty (it had shrunk every deep convolution to nothing, so the network was the rule)
# and nearest-neighbour images (the grid then holds the rule's own voxels, so the loss does not ask the veto
# for voxels trilinear ZADC lost): 5-fold CV on the 37 BONBID dev cases, results.md.
PRIOR_L1_LAMBDA = 0.0
PRIOR_IMAGE_INTERPOLATION = "nearest"


def is_zmap_channel(name: str) -> bool:
    """A channel is the ZADC z-map when :mod:`hiennu.io.channels` says so (its name is ZADC)."""
    return channel_index([name], ZADC) == 0


def is_adc_channel(name: str) -> bool:
    """A channel is the ADC map when :mod:`hiennu.io.channels` says so (its name is ADC)."""
    return channel_index([name], ADC) == 0


def choose_normalization(index: int, name: str, fp: DatasetFingerprint) -> tuple[ChannelNormalization, str]:
    """The nnU-Net-style scheme for one channel, and a sentence saying why."""
    stats = fp.intensity[index]
    if is_zmap_channel(name):
        return (ChannelNormalization(name, "atlas_zscore", 0.0, 1.0, -ZADC_CLIP, ZADC_CLIP),
                f"{name}: a z-map against an atlas (name), so atlas_zscore: clip to [-{ZADC_CLIP:g}, {ZADC_CLIP:g}] "
                f"and keep its scale (ZADC < -2 keeps its meaning)")
    if is_adc_channel(name):
        return (ChannelNormalization(name, "global_zscore", stats.mean, max(stats.std, 1e-8),
                                     stats.percentile_00_5, stats.percentile_99_5),
                f"{name}: a quantitative map (ADC, 10^-6 mm^2/s), so global_zscore with the dataset's brain "
                f"statistics: clip [{stats.percentile_00_5:.4g}, {stats.percentile_99_5:.4g}], "
                f"mean {stats.mean:.4g}, std {stats.std:.4g}")
    return (ChannelNormalization(name, "zscore_brain"),
            f"{name}: not a known quantitative map, so zscore_brain (per image, brain voxels)")


def _xyz(size_zyx: Sequence[int]) -> list[int]:
    return [int(v) for v in reversed(tuple(size_zyx))]


def default_plan_for() -> str:
    """``gpu`` when torch sees a CUDA device, else ``cpu``."""
    import torch
    return "gpu" if torch.cuda.is_available() else "cpu"


def plan_experiment(fp: DatasetFingerprint, grid_policy: str = "memory",
                    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
                    target_size_xyz: Sequence[int] | None = None, plan_for: str | None = None) -> Plans:
    """Plans for the fingerprinted dataset (round-trip ceilings not yet measured)."""
    if grid_policy not in GRID_POLICIES:
        raise HiennuError(f"unknown grid policy {grid_policy!r}; choose one of {', '.join(GRID_POLICIES)}")
    if gpu_memory_gb <= 0:
        raise HiennuError(f"--gpu-memory-gb must be positive, got {gpu_memory_gb}")
    channels = list(fp.channel_names)
    network = NetworkPlan(in_channels=len(channels))
    training = TrainingPlan()
    factor = network.downsampling_factor_zyx
    unit = grid_unit(network)
    sizes = fp.sizes_zyx
    paper = paper_grid(sizes, unit)
    lossless = lossless_grid(sizes, unit)
    forced = None
    if target_size_xyz is not None:
        forced = tuple(int(v) for v in reversed(tuple(target_size_xyz)))
        bad = [f"{s} (factor {f})" for s, f in zip(forced, factor) if s < f or s % f]
        if len(forced) != 3 or bad:
            raise HiennuError(f"--target-size {list(target_size_xyz)} (x y z): every size must be a positive "
                              f"multiple of the network's down-sampling factor {list(reversed(factor))} (x y z); "
                              f"bad: {', '.join(bad)}")

    # 3d_paper
    paper_grid_zyx = forced or paper
    paper_notes = [f"grid {_xyz(paper_grid_zyx)} (x y z): " + (
        "forced by --target-size" if forced else
        f"mean size over {len(sizes)} cases rounded to multiples of {list(reversed(unit))} (paper rule)"),
        "normalization zscore_image for every channel (paper)", "labels nearest neighbour (paper)",
        PREDICTION_NOTE]
    paper_cfg = Configuration(
        name=PAPER_CONFIGURATION, target_size_xyz=_xyz(paper_grid_zyx),
        grid_policy="forced" if forced else "paper",
        normalization=[ChannelNormalization(n, "zscore_image") for n in channels],
        network=NetworkPlan(in_channels=len(channels)), training=TrainingPlan(),
        label_interpolation="nearest", prediction_interpolation="nearest", notes="; ".join(paper_notes))

    # 3d_lossless (the whole volume on one grid)
    if forced:
        full_grid, policy = forced, "forced"
        grid_note = "forced by --target-size"
    elif grid_policy == "paper":
        full_grid, policy = paper, "paper"
        grid_note = "mean-size rule (--grid-policy paper)"
    else:
        full_grid, estimate = memory_grid(sizes, network, training.batch_size, gpu_memory_gb)
        policy = "memory"
        grid_note = (f"largest grid up to the lossless {_xyz(lossless)} fitting {gpu_memory_gb:g} GB at batch "
                     f"{training.batch_size}: estimated {estimate.total_gib:.2f} GiB")
    estimate = estimate_training_memory(network, full_grid, training.batch_size)
    norms, reasons = zip(*(choose_normalization(i, n, fp) for i, n in enumerate(channels)))
    full_notes = [f"grid {_xyz(full_grid)} (x y z): {grid_note}",
                  f"estimated training memory {estimate.total_gib:.2f} GiB (bf16, batch {training.batch_size})",
                  *reasons,
                  "labels nearest neighbour: on the 37 BONBID dev cases it round-trips better than sdf "
                  "(documentation/plans.md)", PREDICTION_NOTE]
    lossless_cfg = Configuration(
        name=LOSSLESS_CONFIGURATION, target_size_xyz=_xyz(full_grid), grid_policy=policy,
        normalization=list(norms), network=network, training=training,
        label_interpolation="nearest", prediction_interpolation="nearest", notes="; ".join(full_notes))
    patch_cfg = plan_patch_configuration(fp, list(norms), list(reasons), plan_for or default_plan_for(),
                                         gpu_memory_gb)
    slice_cfg = plan_2d_configuration(fp, patch_cfg, gpu_memory_gb)
    for cfg in (lossless_cfg, paper_cfg):
        log.info("plan %s: grid %s (x y z), policy %s", cfg.name, cfg.target_size_xyz, cfg.grid_policy)
    log.info("plan %s (for %s): spacing %s mm (z y x), patch %s, batch %d", patch_cfg.name, patch_cfg.planned_for,
             patch_cfg.target_spacing_zyx, patch_cfg.patch_size_zyx, patch_cfg.training.batch_size)
    return Plans(dataset_name=fp.dataset_name, channel_names=channels,
                 configurations={DEFAULT_CONFIGURATION: patch_cfg, SLICE_CONFIGURATION: slice_cfg,
                                 LOSSLESS_CONFIGURATION: lossless_cfg, PAPER_CONFIGURATION: paper_cfg},
                 hiennu_version=__version__)


def plan_patch_configuration(fp: DatasetFingerprint, norms: list[ChannelNormalization], norm_reasons: list[str],
                             plan_for: str, gpu_memory_gb: float, cpu_bf16: bool | None = None,
                             spacing: tuple[Sequence[float], str] | None = None,
                             grid_policy: str = "spacing") -> Configuration:
    """``3d_fullres``: brain crop, planned spacing, a patch and network sized for ``plan_for``.

    cpu_bf16: train under bfloat16 autocast on the CPU (``training.cpu_bf16``); None: when planning
    for a CPU that runs bf16 natively (:func:`hiennu.device.cpu_has_native_bf16`).
    spacing: ``(target spacing (z, y, x) mm, the reason in words)`` to plan at instead of nnU-Net's
    rule (a refined or forced spacing, :mod:`~hiennu.planning.spacing_refinement`); grid_policy is
    then recorded as given (``spacing`` or ``forced``).
    """
    if plan_for not in PLAN_FOR:
        raise HiennuError(f"--plan-for must be one of {', '.join(PLAN_FOR)}, got {plan_for!r}")
    spacings = [c.spacing_zyx for c in fp.cases]
    boxes = [c.brain_box_zyx for c in fp.cases]
    if spacing is None:
        spacing = plan_target_spacing(spacings, boxes)
    spacing, spacing_reason = [float(v) for v in spacing[0]], spacing[1]
    at_target = np.asarray(boxes, float) * np.asarray(spacings, float) / np.asarray(spacing, float)
    median_box, max_box = np.median(at_target, 0), at_target.max(0)
    patch = plan_patch(median_box, max_box, spacing, len(fp.channel_names), plan_for, gpu_memory_gb,
                       float(np.prod(at_target, axis=1).sum()))
    schedule = PATCH_SCHEDULE[plan_for]
    zmaps = [i for i, name in enumerate(fp.channel_names) if is_zmap_channel(name)]
    network = patch.network
    if zmaps:
        network.rule_prior, network.rule_prior_mode = True, "veto"
        network.rule_prior_channel, network.rule_prior_threshold = zmaps[0], RULE_THRESHOLD
        network.rule_prior_scale = PRIOR_SCALE
        foreground, learning_rate, lr_schedule = PRIOR_FOREGROUND, PRIOR_LEARNING_RATE, PRIOR_LR_SCHEDULE
        l1_lambda, image_interpolation = PRIOR_L1_LAMBDA, PRIOR_IMAGE_INTERPOLATION
        prior_note = (f"the rule {fp.channel_names[zmaps[0]]} < {RULE_THRESHOLD:g} as a logit prior the network may "
                      f"mostly only veto (rule_prior_mode veto), starting at {PRIOR_SCALE:g} logits per unit of "
                      f"z-score: an untrained model is the rule; {PRIOR_FOREGROUND:g} of the patches on lesions, "
                      f"AdamW {PRIOR_LEARNING_RATE:g} with {PRIOR_LR_SCHEDULE} decay, no L1 penalty, images to the "
                      f"grid by {PRIOR_IMAGE_INTERPOLATION} neighbour so that the grid holds the rule's own voxels "
                      f"(chosen by 5-fold CV on BONBID, documentation/results.md)")
    else:
        foreground, learning_rate = PATCH_FOREGROUND, TrainingPlan.learning_rate
        lr_schedule = TrainingPlan.lr_schedule
        l1_lambda, image_interpolation = TrainingPlan.l1_lambda, Configuration.image_interpolation
        prior_note = f"no z-map channel, so no rule prior; {PATCH_FOREGROUND:g} of the patches on lesions"
    if cpu_bf16 is None:
        cpu_bf16 = plan_for == "cpu" and cpu_has_native_bf16()
    training = TrainingPlan(batch_size=patch.batch_size, foreground_oversampling=foreground,
                            learning_rate=learning_rate, lr_schedule=lr_schedule, l1_lambda=l1_lambda,
                            cpu_bf16=cpu_bf16, **schedule)
    mirror_axes, mirror_note = left_right_axis(fp)
    augmentation = AugmentationPlan(p_mirror=0.5, mirror_axes=mirror_axes)
    notes = [f"target spacing: {spacing_reason}", f"patch and network: {patch.reason}",
             f"schedule: {schedule['iterations_per_epoch']} iterations per epoch (a patch epoch), at most "
             f"{schedule['max_epochs']} epochs, early stopping after {schedule['patience']} without improvement",
             prior_note,
             _precision_note(plan_for, cpu_bf16),
             mirror_note,
             *norm_reasons,
             "labels nearest neighbour to the target spacing; probabilities back to the native grid by nearest "
             "neighbour: on the 37 BONBID dev cases it matched linear with a trained model and beat it on the label "
             "round trip (documentation/results.md)", INFERENCE_WINDOW_NOTE]
    return Configuration(
        name=DEFAULT_CONFIGURATION, target_size_xyz=None, grid_policy=grid_policy, normalization=norms,
        target_spacing_zyx=spacing, crop_to_brain=True, patch_size_zyx=patch.patch_size_zyx, planned_for=plan_for,
        network=network, training=training, augmentation=augmentation, image_interpolation=image_interpolation,
        label_interpolation="nearest", prediction_interpolation="nearest", inference_window=INFERENCE_WINDOW,
        notes="; ".join(notes))


def left_right_axis(fp: DatasetFingerprint) -> tuple[list[int], str]:
    """The array axis (0 = z, 1 = y, 2 = x) that runs left-right in the cases, from the directions the fingerprint
    recorded, as ``(mirror_axes, note)``; the brain is mirror-symmetric across that axis only.

    Hand-written because the planner is the one place that sees every case's direction (SimpleITK's, row-major:
    column c is the world direction of index axis c, i.e. of array axis 2 - c; world x is left-right in LPS and RAS).
    The axis most aligned with world x in most cases is mirrored; with no case aligned within 45 degrees, the
    array's x axis is kept and the note says that the directions do not tell.
    """
    votes: dict[int, list[float]] = {}
    for case in fp.cases:
        direction = np.abs(np.asarray(case.geometry.get("direction", (1, 0, 0, 0, 1, 0, 0, 0, 1)), float).reshape(3, 3))
        column = int(np.argmax(direction[0]))
        votes.setdefault(2 - column, []).append(float(direction[0, column]))
    if not votes:
        return list(PATCH_MIRROR_AXES), "mirroring along x (no case to read a direction from)"
    axis = max(votes, key=lambda a: (len(votes[a]), a))
    aligned = [v for v in votes[axis] if v >= LEFT_RIGHT_ALIGNMENT]
    name = "zyx"[axis]
    if not aligned:
        return (list(PATCH_MIRROR_AXES), "mirroring along x, in training (p 0.5) and as test-time augmentation: no "
                "array axis of the cases runs left-right within 45 degrees, so the directions do not say which axis "
                "the brain is symmetric across (edit augmentation.mirror_axes if you know it)")
    agree = f"{len(votes[axis])} of {len(fp.cases)} cases" if len(votes) > 1 else "every case"
    return ([axis], f"mirroring along {name} only, in training (p 0.5) and as test-time augmentation: in {agree} the "
                    f"array's {name} axis runs left-right (the image directions), and the brain is left-right "
                    f"symmetric, the other axes are not")


def plan_2d_configuration(fp: DatasetFingerprint, fullres: Configuration, gpu_memory_gb: float) -> Configuration:
    """``2d`` (nnU-Net's meaning): brain crop, ``fullres``'s in-plane spacing with each case's own slices,
    a 2D network on one-slice patches sized for the device ``fullres`` was planned for.

    Everything the two share (normalization, rule prior, precision, interpolations, augmentation) is
    taken from ``fullres``; the patch, network, batch and schedule are the slice-wise ones
    (:func:`~hiennu.planning.topology.plan_slice_patch`, :data:`SLICE_SCHEDULE`).
    """
    plan_for = fullres.planned_for
    in_plane = [float(v) for v in fullres.target_spacing_zyx[1:]]
    slice_spacing = float(np.median([c.spacing_zyx[0] for c in fp.cases]))
    spacing = [slice_spacing] + in_plane
    at_target = np.asarray([[b[0], b[1] * s[1] / in_plane[0], b[2] * s[2] / in_plane[1]]
                            for b, s in ((c.brain_box_zyx, c.spacing_zyx) for c in fp.cases)], float)
    patch = plan_slice_patch(at_target.max(0), spacing, len(fp.channel_names), plan_for, gpu_memory_gb,
                             float(np.prod(at_target, axis=1).sum()))
    network = dataclasses.replace(patch.network, **{f: getattr(fullres.network, f) for f in _PRIOR_FIELDS})
    schedule = SLICE_SCHEDULE[plan_for]
    training = dataclasses.replace(fullres.training, batch_size=patch.batch_size, foreground_oversampling=SLICE_FOREGROUND,
                                   batch_dice=SLICE_BATCH_DICE, **schedule)
    notes = [f"spacing: the in-plane spacing of {fullres.name} ({in_plane[0]:.4g} x {in_plane[1]:.4g} mm, y x); each "
             f"case keeps its own slices (median slice spacing {slice_spacing:.4g} mm, recorded as target_spacing_zyx[0] "
             f"for information only)",
             f"patch and network: {patch.reason}",
             f"schedule: {schedule['iterations_per_epoch']} iterations per epoch, {schedule['max_epochs']} epochs "
             f"({schedule['iterations_per_epoch'] * schedule['max_epochs']} steps)",
             f"a sample is one slice (nnU-Net's 2d), {SLICE_FOREGROUND:g} of them centred on lesions, batch Dice (the Dice "
             f"terms sum over the batch's slices: a per-slice Dice rewards emptying every lesion-free slice); the rule "
             f"prior, precision, optimizer, interpolations and augmentation as {fullres.name}",
             "the 2D network runs slice by slice: prediction takes every slice of the brain box in one window, in-plane "
             f"as {fullres.name} (inference_window {fullres.inference_window}); mirroring along x only",
             f"normalization as {fullres.name}: " + ", ".join(f"{n.channel_name} {n.scheme}"
                                                              for n in fullres.normalization)]
    return dataclasses.replace(
        fullres, name=SLICE_CONFIGURATION, target_spacing_zyx=[float(round(v, 6)) for v in spacing],
        patch_size_zyx=patch.patch_size_zyx, network=network, training=training,
        normalization=list(fullres.normalization), augmentation=dataclasses.replace(fullres.augmentation),
        roundtrip_dice_mean=None, roundtrip_dice_worst=None,
        notes="; ".join(notes))


_PRIOR_FIELDS = ("rule_prior", "rule_prior_channel", "rule_prior_threshold", "rule_prior_mode", "rule_prior_scale",
                 "rule_prior_cap")


def _precision_note(plan_for: str, cpu_bf16: bool) -> str:
    if plan_for == "gpu":
        return "bfloat16 autocast on CUDA (always)"
    if cpu_bf16:
        return ("bfloat16 autocast on this CPU (training.cpu_bf16), which runs bf16 natively: 2.6x faster training "
                "steps and the same scores on BONBID fold 0 (documentation/benchmarks.md)")
    return "float32 on the CPU (training.cpu_bf16 false)"


def record_roundtrip(config: Configuration, roundtrip: RoundTrip) -> None:
    """Store the measured round-trip ceiling in ``config`` and log it."""
    config.roundtrip_dice_mean = round(roundtrip.mean, 4)
    config.roundtrip_dice_worst = round(roundtrip.worst, 4)
    worst_case = min(roundtrip.dice_per_case, key=roundtrip.dice_per_case.get) if roundtrip.dice_per_case else "-"
    where = (f"spacing {config.target_spacing_zyx} mm (z y x) after the brain crop" if config.is_patch_based
             else f"grid {config.target_size_xyz} (x y z)")
    log.info("round-trip ceiling of %s at %s, labels %s: mean Dice %.4f, worst %.4f (%s)",
             config.name, where, config.label_interpolation, roundtrip.mean, roundtrip.worst, worst_case)
