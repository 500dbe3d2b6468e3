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
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file, write_json

PLANS_NAME = "hiennuPlans"
DEFAULT_CONFIGURATION = "3d_fullres"
PAPER_CONFIGURATION = "3d_paper"
LOSSLESS_CONFIGURATION = "3d_lossless"

NORMALIZATION_SCHEMES = ("zscore_image", "zscore_brain", "global_zscore", "atlas_zscore", "none")
NORM_TYPES = ("batch", "instance")
LR_SCHEDULES = ("exponential", "poly")


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
    """3D U-Net topology (see ``hiennu.networks.unet``).

    features_per_stage: channels of each encoder stage, the last entry being the bottleneck
    (the paper: 3 encoder stages + bottleneck). pool_kernel_sizes: one (z, y, x) max-pool kernel
    per down-sampling step (len = len(features_per_stage) - 1). dropout_per_stage: dropout
    probability of each stage (rising with depth); decoder stages reuse the encoder's value.
    norm: ``batch`` (the paper) or ``instance`` (nnU-Net; right for small patch batches).
    rule_prior: add the ZADC rule as a logit prior, ``logits = net(x) + k * (t - x[c])`` with
    ``c = rule_prior_channel`` (a channel on its atlas z-score scale), ``t = rule_prior_threshold``
    and ``k`` learnable (initialised to 2); the network's head starts at zero, so an untrained
    model predicts exactly the rule ``ZADC < t`` and training learns corrections to it.
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
    rule_prior_threshold: float = -2.0

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

    grid_policy: how the grid or spacing was chosen (``memory``, ``paper``, ``forced``, ``spacing``).
    planned_for: the device the network and patch were sized for (``cpu`` or ``gpu``).
    image_interpolation: ``linear`` (trilinear). label_interpolation: how masks go to the grid
    (``nearest`` or ``sdf``: linear interpolation of the signed distance, threshold at 0).
    prediction_interpolation: how probability maps go back to the native grid before the 0.5
    threshold (``linear`` or ``nearest``).
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
    min_component_voxels: int = 0
    roundtrip_dice_mean: float | None = None
    roundtrip_dice_worst: float | None = None
    notes: str = ""

    @property
    def is_patch_based(self) -> bool:
        """True for the brain-cropped, spacing-resampled, patch-trained kind."""
        return self.patch_size_zyx is not None

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
        try:
            return _from_dict(cls, d)
        except (KeyError, TypeError, ValueError) as e:
            raise HiennuError(f"{source}: cannot be read as plans ({e}); fix the edit or re-run "
                              f"hiennu_plan_and_preprocess to write a fresh file") from None


def _from_dict(cls: type, d: Any) -> Any:
    """Build dataclass ``cls`` from a JSON dict, recursing into nested dataclasses; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise KeyError(f"unknown key(s) {sorted(unknown)} in {cls.__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        kwargs[f.name] = _convert(hints[f.name], d[f.name])
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [_from_dict(args[0], v) for v in value]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return {k: _from_dict(args[1], v) for k, v in value.items()}
    return value


def load_plans(path: str | os.PathLike) -> Plans:
    """Load ``plans.json`` (a file, or a folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "plans.json"
    d = read_json_file(path, "run hiennu_plan_and_preprocess first", "fix the edit or re-plan")
    return Plans.from_dict(d, source=str(path))


def save_plans(plans: Plans, path: str | os.PathLike) -> None:
    path = Path(path)
    if path.is_dir():
        path = path / "plans.json"
    write_json(plans.to_dict(), path)
