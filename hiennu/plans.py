"""Typed plans: what every later stage does, written by the planner and editable by the user.

``plans.json`` holds one or more *configurations* (like nnU-Net's ``3d_fullres``). Each names its
fixed target grid, per-channel normalization, network topology, training schedule and
augmentations. Preprocessing, training and inference read nothing else, so editing the file (and
re-running the stages after it) changes what they do.

Orders: ``target_size_xyz`` is SimpleITK order (x, y, z); everything that describes tensors
(pooling kernels, patch shapes) is numpy order (z, y, x).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file, write_json
from hiennu.masks import RULE_THRESHOLD
from hiennu.paths import DEFAULT_PLANS_NAME, ModelFolder, parse_dataset_folder_name
from hiennu.windows import case_window

PLANS_NAME = DEFAULT_PLANS_NAME  # the default plans identifier (defined with the file names in hiennu.paths)
DEFAULT_CONFIGURATION = "3d_fullres"
SLICE_CONFIGURATION = "2d"
PAPER_CONFIGURATION = "3d_paper"
LOSSLESS_CONFIGURATION = "3d_lossless"

NORMALIZATION_SCHEMES = ("zscore_image", "zscore_brain", "global_zscore", "atlas_zscore", "none")
RULE_CHANNEL_SCHEMES = ("atlas_zscore", "none")  # keep ZADC in its own units, where the rule's -2 is meant
NORM_TYPES = ("batch", "instance")
RULE_PRIOR_MODES = ("add", "veto")
IMAGE_INTERPOLATIONS = ("linear", "nearest")
PREDICTION_INTERPOLATIONS = ("linear", "nearest")
INFERENCE_WINDOWS = ("patch", "case")
LR_SCHEDULES = ("exponential", "poly")
SPATIAL_DIMS = (2, 3)


@dataclass
class ChannelNormalization:
    """How one input channel is normalized after resampling to the grid.

    scheme:
      - ``zscore_image``: (x - mean) / std over every voxel of the resampled image (the paper).
      - ``zscore_brain``: (x - mean) / std over brain voxels of this image; background set to 0.
      - ``global_zscore``: clip to [clip_low, clip_high], then (x - mean) / std with dataset-wide
        values from the fingerprint (nnU-Net's CT scheme; keeps absolute ADC meaning).
      - ``atlas_zscore``: the channel already is a z-score against an atlas (ZADC): clip to
        [clip_low, clip_high] and divide by ``std`` (default 1), mean ignored; background stays 0.
      - ``none``: unchanged.
    mean, std, clip_low, clip_high: in the channel's own units (ADC: 10^-6 mm^2/s).
    """

    channel_name: str
    scheme: str
    mean: float = 0.0
    std: float = 1.0
    clip_low: float | None = None
    clip_high: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in NORMALIZATION_SCHEMES:
            raise HiennuError(f"plans: unknown normalization scheme {self.scheme!r} for channel "
                              f"{self.channel_name!r}; choose one of {', '.join(NORMALIZATION_SCHEMES)}")


@dataclass
class NetworkPlan:
    """U-Net topology (see ``hiennu.networks.unet``), 3D or 2D.

    spatial_dims: 3 (3D convolutions on (z, y, x) patches) or 2 (nnU-Net's ``2d``: 2D convolutions on
    each (y, x) slice; every pool kernel then has z = 1).

    features_per_stage: channels of each encoder stage, the last entry being the bottleneck
    (the paper: 3 encoder stages + bottleneck). pool_kernel_sizes: one (z, y, x) max-pool kernel
    per down-sampling step (len = len(features_per_stage) - 1). dropout_per_stage: dropout
    probability of each stage (rising with depth); decoder stages reuse the encoder's value.
    norm: ``batch`` (the paper) or ``instance`` (nnU-Net; right for small patch batches).
    rule_prior: add the ZADC rule as a logit prior, ``logits = net(x) + k * (t - x[c])`` with
    ``c = rule_prior_channel`` (a channel on its atlas z-score scale), ``t = rule_prior_threshold``
    and ``k`` learnable, initialised to ``rule_prior_scale`` (per unit of z-score); the network's head
    starts at zero, so an untrained model predicts exactly the rule ``ZADC < t`` and training learns corrections to it.
    rule_prior_mode: how the network's output ``n`` corrects the prior ``r``: ``add`` (``r + n``, free
    corrections) or ``veto`` (``r - softplus(n) + log 2``: the network can lower the rule's logits
    without bound but raise them by at most log 2, so it mostly removes what the rule over-calls).
    context_slices: for a 2D network, how many neighbouring slices on either side each slice sees as extra
    input channels ("2.5D"; 0, nnU-Net's 2d, sees its own slice only). A training patch then needs
    ``patch_size_zyx[0] >= 2 * context_slices + 1``: its outer context slices are input only and the loss
    is taken on the slices between them; prediction gives a case's edge slices zero slices as their missing
    neighbours, as a training patch is zero-padded beyond its case.
    rule_prior_cap: upper bound of the prior's logits (``min(k (t - z), cap)``), or None for no bound.
    A sharp prior (large ``k``) saturates the sigmoid inside the rule (``k = 10`` puts a voxel one
    z-score past the threshold at probability 0.99995), where a Dice loss has almost no gradient
    for the network's veto; a cap of a few logits keeps those voxels at a probability the loss can
    still move, while the voxels outside the rule stay sharply off.
    """

    in_channels: int = 2
    out_channels: int = 1
    features_per_stage: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    kernel_size: int = 3
    pool_kernel_sizes: list[list[int]] = field(default_factory=lambda: [[2, 2, 2]] * 3)
    dropout_per_stage: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.3])
    negative_slope: float = 0.01
    deep_supervision: bool = False
    norm: str = "batch"
    rule_prior: bool = False
    rule_prior_channel: int = 1
    rule_prior_threshold: float = RULE_THRESHOLD
    rule_prior_mode: str = "add"
    rule_prior_scale: float = 2.0
    rule_prior_cap: float | None = None
    spatial_dims: int = 3
    context_slices: int = 0

    @property
    def downsampling_factor_zyx(self) -> tuple[int, int, int]:
        f = [1, 1, 1]
        for k in self.pool_kernel_sizes:
            f = [a * b for a, b in zip(f, k)]
        return tuple(f)  # type: ignore[return-value]


@dataclass
class TrainingPlan:
    """Optimization schedule (the paper's values are the defaults).

    iterations_per_epoch: None means one pass over the fold's training cases
    (ceil(n_train / batch_size)); a patch configuration states a fixed number (a "patch epoch").
    foreground_oversampling: fraction of each batch drawn from cases with a lesion (0 = uniform
    sampling, the paper); in a patch configuration those patches are also centred on a lesion voxel.
    lr_schedule: ``exponential`` (multiply by ``lr_decay_gamma`` after every epoch, the paper) or
    ``poly`` (nnU-Net: ``lr * (1 - epoch / max_epochs) ** 0.9``). early_stopping_metric: validation Dice
    on the grid (``"val_dice"``), or ``"ema_val_dice"`` (exponential moving average, nnU-Net style).
    cpu_bf16: on a CPU, run the network under bfloat16 autocast (weights, optimizer and loss stay
    float32); on CUDA bf16 autocast is always on. Faster on CPUs with native bf16, not bit-identical
    to float32 (``hiennu.device``).
    weight_ema: decay per optimizer step of an exponential moving average of the weights
    (``w_avg <- d w_avg + (1 - d) w``; 0 = off). When on, validation and the best and final checkpoints
    use the averaged weights, which smooths the last steps' noise out of the shipped model.
    batch_dice: the region terms of the loss sum over the whole batch before their ratio (nnU-Net's
    ``batch_dice``, which its planner turns on for ``2d``): on one-slice samples a per-sample Dice
    rewards emptying every lesion-free slice (:func:`hiennu.losses.base.use_batch_reduction`).
    time_budget_minutes: wall-clock budget of the training loop (steps and per-epoch validation, minutes;
    None = no budget). With one, the schedule's progress is ``max(epoch / max_epochs, spent / budget)``
    (the poly rate decays on it, so the rate reaches 0 when the time does) and training stops at the end
    of the epoch in which the budget ran out, however many epochs are left: a fold costs what the user
    can spend on the machine at hand, whatever its speed.
    """

    batch_size: int = 4
    optimizer: str = "AdamW"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    lr_decay_gamma: float = 0.9
    l1_lambda: float = 1e-4
    grad_clip_norm: float = 1.0
    max_epochs: int = 100
    patience: int = 10
    iterations_per_epoch: int | None = None
    foreground_oversampling: float = 0.0
    early_stopping_metric: str = "val_dice"
    num_workers: int = 2
    lr_schedule: str = "exponential"
    cpu_bf16: bool = False
    weight_ema: float = 0.0
    batch_dice: bool = False
    time_budget_minutes: float | None = None


@dataclass
class AugmentationPlan:
    """Augmentations, each applied with its own probability (the paper's values are defaults).

    noise: additive Gaussian noise, mean 0, std ``noise_std`` (units of the normalized image).
    lowres: simulated anisotropic low resolution, down-sampling factor in ``lowres_factor``.
    blur: Gaussian blur, sigma (voxels) uniform in ``blur_sigma``.
    gamma: gamma with log(gamma) uniform in ``log_gamma``.
    elastic: elastic deformation, displacement magnitude ``elastic_alpha`` and smoothness
    ``elastic_sigma`` (voxels). mirror: random flips along ``mirror_axes`` (numpy axes of the
    spatial array, 0 = z) with probability ``p_mirror`` each (0 in the paper).
    rotation: in-plane rotation (about the z axis, in the y-x plane) by an angle uniform in
    ``rotation_degrees`` (degrees). scale: the sampling coordinates multiplied by one factor for every
    axis, drawn as batchgenerators draws it: with probability 1/2 uniform in (``scale_range[0]``, 1)
    (structures grow), otherwise uniform in (1, ``scale_range[1]``) (they shrink). Neither is in the
    paper (probability 0); nnU-Net uses both with probability 0.2, rotation +-180 degrees in 2D and
    scale (0.7, 1.4). Elastic deformation, rotation and scaling are one resampling of the sample.
    intensity_skip_channels: input channels (indices) that noise, blur, low resolution and gamma leave as
    they are, while elastic deformation and mirroring move them with the others; empty (nnU-Net's habit):
    every channel. For the channel a rule prior thresholds (``network.rule_prior_channel``): the
    intensity transforms move a z-map across its threshold (simulated low resolution flips about 40 % of
    the rule's voxels on a BONBID slice, gamma about 9 %), so in training the prior would no longer be the
    rule that the labels and the validation cases see (results.md, session 22).
    """

    p_noise: float = 0.5
    noise_std: float = 0.01
    p_lowres: float = 0.5
    lowres_factor: list[float] = field(default_factory=lambda: [1.2, 2.0])
    p_blur: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.0, 0.5])
    p_gamma: float = 0.5
    log_gamma: list[float] = field(default_factory=lambda: [-0.1, 0.1])
    p_elastic: float = 0.5
    elastic_alpha: list[float] = field(default_factory=lambda: [0.0, 200.0])
    elastic_sigma: list[float] = field(default_factory=lambda: [9.0, 13.0])
    p_mirror: float = 0.0
    mirror_axes: list[int] = field(default_factory=lambda: [2])
    intensity_skip_channels: list[int] = field(default_factory=list)
    p_rotation: float = 0.0
    rotation_degrees: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    p_scale: float = 0.0
    scale_range: list[float] = field(default_factory=lambda: [0.7, 1.4])


@dataclass
class Configuration:
    """One way of preprocessing and training.

    Two kinds, told apart by ``patch_size_zyx``:

    - whole-volume grid (``3d_paper``, ``3d_lossless``): every case is resampled to one fixed grid,
      ``target_size_xyz`` (x, y, z) in voxels, and the network sees whole cases.
    - brain crop + planned spacing + patches (``3d_fullres``, nnU-Net's meaning): each case is cropped
      to its brain box (ADC != 0), resampled to ``target_spacing_zyx`` (mm, z y x), trained on
      patches of ``patch_size_zyx`` voxels and predicted with a sliding window.
      ``target_size_xyz`` is None.
    - brain crop + in-plane spacing + slices (``2d``, nnU-Net's meaning): as above, but each case keeps
      its own slice spacing (only y and x are resampled; ``target_spacing_zyx[0]`` is the median slice
      spacing, for information) and the network is 2D (``network.spatial_dims`` 2). A training sample is
      ``patch_size_zyx`` ``[k, y, x]``: k consecutive slices of one case, each run alone through the 2D
      network, the loss taken over the k slices together (one slice when k is 1, as in nnU-Net); with
      ``network.context_slices`` c the outer c slices on either side are the neighbours the others see, and
      the loss is over the k - 2c between them. The augmentation of a 2D sample is in-plane: one elastic
      field, rotation and mirroring for all its slices. Prediction runs the 2D network on every slice of the brain box.

    grid_policy: how the grid or spacing was chosen (``memory``, ``paper``, ``forced``, ``spacing``).
    planned_for: the device the network and patch were sized for (``cpu`` or ``gpu``).
    image_interpolation: ``linear`` (trilinear) or ``nearest`` (each grid voxel takes its nearest
    native voxel's value; with a rule prior the ZADC < -2 rule on the grid is then exactly the
    resampled native rule, where trilinear values between thick slices lose lesion borders).
    label_interpolation: how masks go to the grid
    (``nearest`` or ``sdf``: linear interpolation of the signed distance, threshold at 0).
    prediction_interpolation: how probability maps go back to the native grid before the 0.5
    threshold (``linear`` or ``nearest``).
    inference_window: the sliding window of a patch configuration (validation and prediction):
    ``patch`` (nnU-Net's: windows of the training patch, overlapping by half) or ``case`` (one window
    over the whole brain-cropped case when that is cheaper than the patch windows and at most twice the
    patch's voxels, else the patch windows; :func:`hiennu.windows.case_window`). Ignored by a whole-volume
    configuration. Plans written before the field existed read as ``patch``.
    roundtrip_dice_mean / roundtrip_dice_worst: measured ceiling, label -> grid -> native Dice on the
    training cases (None until measured).
    """

    name: str
    target_size_xyz: list[int] | None
    grid_policy: str
    normalization: list[ChannelNormalization]
    target_spacing_zyx: list[float] | None = None
    crop_to_brain: bool = False
    patch_size_zyx: list[int] | None = None
    planned_for: str = "gpu"
    network: NetworkPlan = field(default_factory=NetworkPlan)
    training: TrainingPlan = field(default_factory=TrainingPlan)
    augmentation: AugmentationPlan = field(default_factory=AugmentationPlan)
    image_interpolation: str = "linear"
    label_interpolation: str = "nearest"
    prediction_interpolation: str = "linear"
    inference_window: str = "patch"
    min_component_voxels: int = 0
    roundtrip_dice_mean: float | None = None
    roundtrip_dice_worst: float | None = None
    notes: str = ""

    @property
    def is_patch_based(self) -> bool:
        """True for the brain-cropped, spacing-resampled, patch-trained kind."""
        return self.patch_size_zyx is not None

    @property
    def is_2d(self) -> bool:
        """True for a slice-wise configuration (2D network, one-slice patches)."""
        return self.network.spatial_dims == 2

    @property
    def resampling_spacing_zyx(self) -> tuple[float | None, float, float] | None:
        """The spacing (mm, z y x) each case is resampled to; ``None`` on an axis keeps the case's own
        (a ``2d`` configuration keeps its slices); ``None`` altogether for a whole-volume grid."""
        if self.target_spacing_zyx is None:
            return None
        z, y, x = (float(v) for v in self.target_spacing_zyx)
        return (None, y, x) if self.is_2d else (z, y, x)

    def inference_window_zyx(self, shape_zyx: Sequence[int]) -> tuple[int, int, int]:
        """The sliding window (z, y, x voxels) for a preprocessed case of ``shape_zyx``: the training
        patch, except that a ``2d`` configuration takes every slice at once (its network runs slice by slice);
        with ``inference_window`` ``case``, one window over the whole case instead when
        :func:`hiennu.windows.case_window` finds it cheaper (in-plane only for a ``2d`` configuration)."""
        patch = self.input_size_zyx
        window = (max(1, int(shape_zyx[0])), patch[1], patch[2]) if self.is_2d else patch
        if self.inference_window != "case" or not self.is_patch_based:
            return window
        return case_window(shape_zyx, window, self.network.downsampling_factor_zyx)

    @property
    def target_size_zyx(self) -> tuple[int, int, int]:
        if self.target_size_xyz is None:
            raise HiennuError(f"plans: configuration {self.name!r} has no fixed grid (it is patch based: "
                              f"target spacing {self.target_spacing_zyx} mm, patch {self.patch_size_zyx})")
        return tuple(reversed(self.target_size_xyz))  # type: ignore[return-value]

    @property
    def input_size_zyx(self) -> tuple[int, int, int]:
        """What the network sees in training: the patch, or the whole grid."""
        if self.patch_size_zyx is not None:
            return tuple(int(v) for v in self.patch_size_zyx)  # type: ignore[return-value]
        return self.target_size_zyx


@dataclass
class Plans:
    """Everything the planner decided for one dataset."""

    dataset_name: str
    channel_names: list[str]
    configurations: dict[str, Configuration]
    plans_name: str = PLANS_NAME
    default_configuration: str = DEFAULT_CONFIGURATION
    hiennu_version: str = ""

    def configuration(self, name: str | None = None) -> Configuration:
        name = name or self.default_configuration
        if name not in self.configurations:
            raise HiennuError(f"plans {self.plans_name!r} of {self.dataset_name} have no configuration {name!r}; "
                              f"available: {', '.join(self.configurations)}")
        return self.configurations[name]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "plans.json") -> "Plans":
        """Build and fully validate plans from their JSON form (see :func:`plans_from_dict`)."""
        return plans_from_dict(d, source)


# ------------------------------------------------------------------------------------------ validation
# Allowed values of the enumerated fields, by field name (in whichever dataclass it appears).
# A new enumerated field is one line here; loading checks it and names the JSON path on refusal.
ENUMERATED_FIELDS: dict[str, tuple[str, ...]] = {
    "scheme": NORMALIZATION_SCHEMES,
    "image_interpolation": IMAGE_INTERPOLATIONS,
    "label_interpolation": ("nearest", "sdf"),
    "prediction_interpolation": PREDICTION_INTERPOLATIONS,
    "inference_window": INFERENCE_WINDOWS,
    "optimizer": ("AdamW",),
    "early_stopping_metric": ("val_dice", "ema_val_dice"),
    "norm": NORM_TYPES,
    "rule_prior_mode": RULE_PRIOR_MODES,
    "lr_schedule": LR_SCHEDULES,
    "planned_for": ("cpu", "gpu"),
    "spatial_dims": SPATIAL_DIMS,
}

# Numeric ranges, by field name: (lowest, highest, lowest allowed itself); None = unbounded.
NUMBER_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "batch_size": (1, None, True), "max_epochs": (1, None, True), "patience": (1, None, True),
    "iterations_per_epoch": (1, None, True), "num_workers": (0, None, True), "context_slices": (0, None, True),
    "learning_rate": (0, None, False), "weight_decay": (0, None, True), "lr_decay_gamma": (0, 1, False),
    "rule_prior_scale": (0, None, False), "rule_prior_cap": (0, None, False),
    "l1_lambda": (0, None, True), "grad_clip_norm": (0, None, False), "foreground_oversampling": (0, 1, True),
    "weight_ema": (0, 0.99999, True), "time_budget_minutes": (0, None, False),
    "in_channels": (1, None, True), "out_channels": (1, None, True), "kernel_size": (1, None, True),
    "min_component_voxels": (0, None, True),
    "p_noise": (0, 1, True), "p_lowres": (0, 1, True), "p_blur": (0, 1, True), "p_gamma": (0, 1, True),
    "p_elastic": (0, 1, True), "p_mirror": (0, 1, True), "p_rotation": (0, 1, True), "p_scale": (0, 1, True),
}


class PlansError(HiennuError):
    """plans.json (or a checkpoint's configuration) that does not describe valid plans."""


def plans_from_dict(d: Any, source: str = "plans.json") -> Plans:
    """Plans from their JSON form, validated completely; raises :class:`PlansError` naming the JSON path.

    Checked: every key is known and every required key present; each value has its field's type
    (from the dataclass type hints: ints for whole numbers, ints or floats for numbers, never
    booleans or strings for numbers, ``null`` only where the hint allows None, lists and nested
    objects recursively); enumerated fields (:data:`ENUMERATED_FIELDS`) and numeric ranges
    (:data:`NUMBER_RANGES`); and every configuration's sizes against its network
    (:func:`configuration_problems`).
    """
    plans = _from_dict(Plans, d, "", source)
    for name, config in plans.configurations.items():
        problems = configuration_problems(config)
        if problems:
            raise PlansError(f"{source}: configurations.{name}: {'; '.join(problems)}; fix the edit or re-run "
                             f"hiennu_plan_and_preprocess to write fresh plans")
    return plans


def configuration_from_dict(d: Any, source: str, path: str = "configuration") -> Configuration:
    """A :class:`Configuration` from its JSON form (e.g. as a checkpoint records it), validated."""
    config = _from_dict(Configuration, d, path, source)
    problems = configuration_problems(config)
    if problems:
        raise PlansError(f"{source}: {path}: {'; '.join(problems)}")
    return config


def sized_fields(config: Configuration) -> list[tuple[str, tuple[int, ...]]]:
    """The (field name, size (z, y, x) in voxels) pairs the network must divide on every axis.

    One entry per size the network sees whole; add new sizes (a patch size) here.
    """
    fields = []
    if config.target_size_xyz is not None:
        fields.append(("target_size_xyz", tuple(config.target_size_zyx)))
    if config.patch_size_zyx is not None:
        fields.append(("patch_size_zyx", tuple(int(v) for v in config.patch_size_zyx)))
    return fields


def configuration_problems(config: Configuration) -> list[str]:
    """What in ``config`` the network cannot be built for or cannot divide (empty when fine).

    The network: one pool kernel (3 positive ints, z y x) per down-sampling step and one dropout
    value per stage. Each size of :func:`sized_fields`: three positive voxel counts, each a
    multiple of the network's total down-sampling factor on that axis
    (:attr:`NetworkPlan.downsampling_factor_zyx`).
    """
    net = config.network
    problems = []
    n = len(net.features_per_stage)
    if n < 1:
        return ["network.features_per_stage is empty; give one channel count per stage"]
    if n < 2:
        problems.append(f"network.features_per_stage {net.features_per_stage} has one stage: the U-Net needs two or "
                        f"more (an encoder stage, at least one down-sampling step and a decoder); give another "
                        f"stage and a pool kernel")
    if len(net.pool_kernel_sizes) != n - 1:
        problems.append(f"network.pool_kernel_sizes has {len(net.pool_kernel_sizes)} entries but "
                        f"network.features_per_stage has {n} stages, so {n - 1} pool kernels are needed")
    bad = [k for k in net.pool_kernel_sizes if len(k) != 3 or min(k) < 1]
    if bad:
        problems.append(f"network.pool_kernel_sizes {bad} must each be three positive ints (z, y, x)")
    if len(net.dropout_per_stage) != n:
        problems.append(f"network.dropout_per_stage has {len(net.dropout_per_stage)} entries, needs one per "
                        f"stage ({n})")
    if config.target_size_xyz is None and (config.patch_size_zyx is None or config.target_spacing_zyx is None):
        problems.append("neither a whole-volume grid (target_size_xyz) nor a patch configuration (patch_size_zyx "
                        "and target_spacing_zyx) is given; set one of them")
    if config.target_spacing_zyx is not None and (len(config.target_spacing_zyx) != 3
                                                  or min(config.target_spacing_zyx) <= 0):
        problems.append(f"target_spacing_zyx must be three positive spacings in mm (z, y, x), got "
                        f"{config.target_spacing_zyx}")
    problems += _dimensionality_problems(config)
    skip = config.augmentation.intensity_skip_channels
    if any(not isinstance(c, int) or not 0 <= c < net.in_channels for c in skip):
        problems.append(f"augmentation.intensity_skip_channels {skip} must be channel indices 0-{net.in_channels - 1} "
                        f"(network.in_channels is {net.in_channels})")
    problems += _network_problems(config)
    problems += _augmentation_problems(config.augmentation)
    if problems:
        return problems
    factor = net.downsampling_factor_zyx
    for name, size_zyx in sized_fields(config):
        if len(size_zyx) != 3 or min(size_zyx) < 1:
            problems.append(f"{name} must be three positive voxel counts, got {list(size_zyx)} (z, y, x)")
            continue
        bad_axes = [f"{axis} {s} is not a multiple of {f}" for axis, s, f in zip("zyx", size_zyx, factor) if s % f]
        if bad_axes:
            # each size is shown in the order its field name says
            xyz = name.endswith("_xyz")
            shown, factor_shown = (list(reversed(size_zyx)), list(reversed(factor))) if xyz else (list(size_zyx),
                                                                                               list(factor))
            order = "(x, y, z)" if xyz else "(z, y, x)"
            problems.append(f"{name} {shown} {order} cannot be divided by the network's down-sampling factor "
                            f"{factor_shown} {order}: {', '.join(bad_axes)}; round each size to a multiple of its factor")
    return problems


def _network_problems(config: Configuration) -> list[str]:
    """Channel counts, dropout probabilities, the rule prior's channel and one normalization per input channel."""
    net, problems = config.network, []
    if any(f < 1 for f in net.features_per_stage):
        problems.append(f"network.features_per_stage {net.features_per_stage} must be channel counts >= 1")
    if any(not 0 <= d < 1 for d in net.dropout_per_stage):
        problems.append(f"network.dropout_per_stage {net.dropout_per_stage} must be probabilities, 0 <= p < 1")
    if net.rule_prior and not 0 <= net.rule_prior_channel < net.in_channels:
        problems.append(f"network.rule_prior_channel {net.rule_prior_channel} is not one of the "
                        f"{net.in_channels} input channels (0-{net.in_channels - 1})")
    elif (net.rule_prior and net.rule_prior_channel < len(config.normalization)
          and config.normalization[net.rule_prior_channel].scheme not in RULE_CHANNEL_SCHEMES):
        norm = config.normalization[net.rule_prior_channel]
        problems.append(f"network.rule_prior thresholds channel {net.rule_prior_channel} ({norm.channel_name}) at "
                        f"{net.rule_prior_threshold:g} in ZADC units, but normalization[{net.rule_prior_channel}] is "
                        f"{norm.scheme}, which moves that threshold; use {' or '.join(RULE_CHANNEL_SCHEMES)} for it "
                        f"or set network.rule_prior false")
    if len(config.normalization) != net.in_channels:
        problems.append(f"normalization has {len(config.normalization)} entries but network.in_channels is "
                        f"{net.in_channels}; give one per input channel")
    return problems


def _range_problem(name: str, values: Sequence[float], lowest: float, strict: bool) -> str | None:
    """``augmentation.NAME`` must be ``[lo, hi]`` with ``lowest <= lo <= hi`` (``lowest < lo`` when strict)."""
    ok = len(values) == 2 and values[0] <= values[1] and (values[0] > lowest if strict else values[0] >= lowest)
    return None if ok else (f"augmentation.{name} {list(values)} must be [lowest, highest] with "
                            f"{lowest:g} {'<' if strict else '<='} lowest <= highest")


def _augmentation_problems(aug: AugmentationPlan) -> list[str]:
    """Every range field as ``[lo, hi]`` within its bounds, the noise level, the mirror axes; then rotation and
    scaling (:func:`_spatial_augmentation_problems`). Why here: these are read only when a batch is augmented,
    where a bad value surfaced as an IndexError or a division by zero mid-training."""
    problems = [p for p in (_range_problem("lowres_factor", aug.lowres_factor, 0.0, True),
                            _range_problem("blur_sigma", aug.blur_sigma, 0.0, False),
                            _range_problem("log_gamma", aug.log_gamma, -math.inf, False),
                            _range_problem("elastic_alpha", aug.elastic_alpha, 0.0, False),
                            _range_problem("elastic_sigma", aug.elastic_sigma, 0.0, True)) if p]
    if aug.noise_std < 0:
        problems.append(f"augmentation.noise_std {aug.noise_std} must be >= 0")
    if any(a not in (0, 1, 2) for a in aug.mirror_axes) or len(set(aug.mirror_axes)) != len(aug.mirror_axes):
        problems.append(f"augmentation.mirror_axes {aug.mirror_axes} must be different axes among 0, 1, 2 (z, y, x)")
    return problems + _spatial_augmentation_problems(aug)


def _spatial_augmentation_problems(aug: AugmentationPlan) -> list[str]:
    """Rotation angles (lo <= hi, within +-180 degrees) and scale factors (0 < lo <= hi) as ranges."""
    problems = []
    deg = aug.rotation_degrees
    if len(deg) != 2 or not -180 <= deg[0] <= deg[1] <= 180:
        problems.append(f"augmentation.rotation_degrees {deg} must be [lowest, highest] in degrees, "
                        f"-180 <= lowest <= highest <= 180")
    scale = aug.scale_range
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        problems.append(f"augmentation.scale_range {scale} must be [lowest, highest] factors, 0 < lowest <= highest")
    return problems


def _dimensionality_problems(config: Configuration) -> list[str]:
    """A 2D network needs one-slice patches and in-plane pooling; a 3D one needs more than one slice."""
    net = config.network
    if net.spatial_dims not in SPATIAL_DIMS:
        return [f"network.spatial_dims is {net.spatial_dims}; choose 2 (slice-wise, nnU-Net's 2d) or 3"]
    patch = config.patch_size_zyx
    context = int(net.context_slices)
    if context and net.spatial_dims != 2:
        return [f"network.context_slices is {context}, but network.spatial_dims is {net.spatial_dims}: neighbouring "
                f"slices as channels are for a 2D network; set network.context_slices to 0"]
    if net.spatial_dims == 2:
        problems = []
        if patch is not None and len(patch) == 3 and int(patch[0]) < 2 * context + 1:
            problems.append(f"patch_size_zyx {list(patch)} has {int(patch[0])} slice(s), but network.context_slices "
                            f"{context} needs {2 * context + 1} (the slice and its neighbours on either side): set "
                            f"patch_size_zyx[0] to {2 * context + 1}")
        if patch is None:
            problems.append("network.spatial_dims 2 needs a patch configuration: set patch_size_zyx to [1, y, x] "
                            "and target_spacing_zyx (a 2D network cannot take a whole-volume grid)")
        deep = [k for k in net.pool_kernel_sizes if len(k) == 3 and int(k[0]) != 1]
        if deep:
            problems.append(f"network.pool_kernel_sizes {deep} pool along z, which a 2D network (network.spatial_dims "
                            f"2) does not have: set their first entry to 1")
        return problems
    if patch is not None and len(patch) == 3 and int(patch[0]) == 1:
        return [f"patch_size_zyx {list(patch)} is a single slice, but network.spatial_dims is 3: set "
                f"network.spatial_dims to 2 for a slice-wise network, or give the patch more slices"]
    return []


# Configuration fields that record how the plan was made, not what the network sees or does.
INFORMATIVE_FIELDS = ("notes", "roundtrip_dice_mean", "roundtrip_dice_worst", "grid_policy")
# Fields that only shape training; a trained fold predicts the same whatever they say now.
TRAINING_ONLY_FIELDS = ("training",)
# Fields that only shape how the trained network is applied (its sliding window) and what happens after it (how
# probabilities go back to the native grid, post-processing): the final weights do not depend on them, so editing
# them after training is a deliberate change of prediction, not a mismatch.
PREDICTION_ONLY_FIELDS = ("inference_window", "prediction_interpolation", "min_component_voxels")
# What the predictor may find edited in a trained fold's plans without refusing the fold.
PREDICTOR_IGNORED_FIELDS = INFORMATIVE_FIELDS + TRAINING_ONLY_FIELDS + PREDICTION_ONLY_FIELDS


def configuration_differences(recorded: Any, current: Configuration, ignore: tuple[str, ...] = INFORMATIVE_FIELDS,
                              limit: int = 4) -> list[str]:
    """Where a configuration recorded with a trained fold (its JSON form, as checkpoints store it)
    differs from ``current``: ``"FIELD.PATH: trained with X, now Y"``, at most ``limit`` entries.

    Keys missing from ``recorded`` take the dataclass defaults (checkpoints of older versions).
    Top-level fields named in ``ignore`` are not compared.
    """
    try:
        rec = dataclasses.asdict(configuration_from_dict(recorded, "checkpoint"))
    except PlansError as e:
        return [f"the recorded configuration is not valid plans ({e})"]
    cur = dataclasses.asdict(current)
    out: list[str] = []
    _diff(rec, cur, "", ignore, out)
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def _diff(a: Any, b: Any, path: str, ignore: tuple[str, ...], out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if not path and key in ignore:
                continue
            _diff(a.get(key), b.get(key), f"{path}.{key}" if path else key, ignore, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and any(isinstance(v, dict) for v in a):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", ignore, out)
    elif a != b:
        out.append(f"{path}: trained with {json.dumps(a)}, now {json.dumps(b)}")


def _where(path: str, source: str) -> str:
    return f"{source}: {path or '(top level)'}"


def _from_dict(cls: type, d: Any, path: str, source: str) -> Any:
    """Build dataclass ``cls`` from a JSON object at ``path``, checking every field (see :func:`plans_from_dict`)."""
    if not isinstance(d, dict):
        raise PlansError(f"{_where(path, source)} must be an object {{...}} ({cls.__name__}), got {_show(d)}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(set(d) - names)
    if unknown:
        raise PlansError(f"{_where(path, source)}: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for f in fields:
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PlansError(f"{_where(sub, source)} is missing (required)")
            continue
        value = _convert(hints[f.name], d[f.name], sub, source)
        _check_field(f.name, value, sub, source)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except HiennuError as e:
        raise PlansError(f"{_where(path, source)}: {e}") from None


def _check_field(name: str, value: Any, path: str, source: str) -> None:
    allowed = ENUMERATED_FIELDS.get(name)
    if allowed is not None and value not in allowed:
        raise PlansError(f"{_where(path, source)} is {_show(value)}; allowed: {', '.join(map(repr, allowed))}")
    bounds = NUMBER_RANGES.get(name)
    if bounds is not None and isinstance(value, (int, float)):
        low, high, low_inclusive = bounds
        too_low = low is not None and (value < low or (value == low and not low_inclusive))
        if too_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>=' if low_inclusive else '>'} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise PlansError(f"{_where(path, source)} is {_show(value)}; it must be {' and '.join(x for x in (lo, hi) if x)}")


def _show(value: Any) -> str:
    kind = {bool: "true/false", str: "text", int: "whole number", float: "number", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
    text = repr(value) if not isinstance(value, (list, dict)) else json.dumps(value)[:60]
    return f"{text} ({kind})"


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return f"an object of {_describe(args[1])}" if len(args) == 2 else "an object"
    if dataclasses.is_dataclass(tp):
        return f"an object ({tp.__name__})"
    return {int: "a whole number", float: "a number", str: "text", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str, source: str) -> Any:
    """``value`` checked against type hint ``tp`` (recursively); ints become floats where floats are expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    wrong = PlansError(f"{_where(path, source)} is {_show(value)}; expected {_describe(tp)}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise wrong
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _convert(option, value, path, source)
            except PlansError as e:
                if len(options) == 1:
                    raise PlansError(str(e).replace(f"expected {_describe(option)}", f"expected {_describe(tp)}")) from None
        raise wrong
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path, source)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise wrong
        return [_convert(args[0], v, f"{path}[{i}]", source) for i, v in enumerate(value)] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise wrong
        if len(args) != 2:
            return dict(value)
        return {k: _convert(args[1], v, f"{path}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        if isinstance(value, float) and not (math.isfinite(value) and value == int(value)):
            raise wrong
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    return value


def load_plans(path: str | os.PathLike) -> Plans:
    """Load ``plans.json`` (a file, or a folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "plans.json"
    dataset = path.parent.name if parse_dataset_folder_name(path.parent.name) else "DATASET"
    d = read_json_file(path, f"plan the dataset first: hiennu_plan_and_preprocess -d {dataset}"
                             f"{'' if path.name == 'plans.json' else ' -p ' + path.name[:-len('.json')]}",
                       "fix the edit or re-plan")
    return Plans.from_dict(d, source=str(path))


def model_configuration(model_dir: str | os.PathLike) -> Configuration | None:
    """The configuration a trained-model folder ``TRAINER__PLANS__CONFIG/`` predicts with: its ``plans.json``'s
    CONFIG (the plans' default when the name has none); None for a folder without ``plans.json``."""
    model = ModelFolder(Path(model_dir))
    if not model.plans.is_file():
        return None
    parts = model.name
    return load_plans(model.plans).configuration(parts.configuration if parts else None)


def model_inference_window(model_dir: str | os.PathLike) -> str | None:
    """The ``inference_window`` a model folder's patch configuration predicts with now; None for a whole-volume
    configuration (it has no sliding window) or a folder without ``plans.json``. What a validation's masks are
    compared with (:func:`hiennu.io.checkpoint.stale_validation_problem`)."""
    config = model_configuration(model_dir)
    return config.inference_window if config is not None and config.is_patch_based else None


def save_plans(plans: Plans, path: str | os.PathLike) -> None:
    path = Path(path)
    if path.is_dir():
        path = path / "plans.json"
    write_json(plans.to_dict(), path)


#: bumped when preprocessing changes what it writes for the same configuration
PREPROCESSING_VERSION = 2


def preprocessing_hash(config: Configuration) -> str:
    """Hash of everything in ``config`` that changes the preprocessed arrays (recorded in each ``CASE.json``, so
    that preprocessing skips up-to-date cases and training refuses cases preprocessed under other plans)."""
    relevant = {"version": PREPROCESSING_VERSION,
                "target_size_xyz": list(config.target_size_xyz) if config.target_size_xyz is not None else None,
                "target_spacing_zyx": config.target_spacing_zyx, "crop_to_brain": config.crop_to_brain,
                "resampling_spacing_zyx": config.resampling_spacing_zyx,
                "normalization": [vars(n) for n in config.normalization],
                "image_interpolation": config.image_interpolation,
                "label_interpolation": config.label_interpolation}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
