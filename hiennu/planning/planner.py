"""The planner: dataset fingerprint -> :class:`~hiennu.planning.plans.Plans` (two configurations).

- ``3d_paper``: the paper's recipe. Grid by the mean-size rule (:func:`~hiennu.planning.grid.paper_grid`),
  every channel z-scored over its own resampled image, labels nearest neighbour, the paper's
  training and augmentation values.
- ``3d_fullres`` (default): grid by ``grid_policy`` (``memory``: the largest grid up to the lossless
  one that fits ``gpu_memory_gb``; ``paper``: the mean-size rule), normalization chosen per channel
  from its ``dataset.json`` name, like nnU-Net:
    ADC (name contains "ADC", not a z-map) -> ``global_zscore`` (clip at the fingerprint's 0.5 / 99.5
    brain percentiles, dataset mean and std); ZADC (name contains "ZADC" or starts with "Z") ->
    ``atlas_zscore`` (clip to [-10, 10], unit scale kept); anything else -> ``zscore_brain``.
- ``target_size_xyz`` given: every configuration uses that grid (``grid_policy`` "forced").

The round-trip ceiling is filled in afterwards by :func:`record_roundtrip`.
"""

from __future__ import annotations

from typing import Sequence

from hiennu import __version__
from hiennu.errors import HiennuError
from hiennu.log import get_logger
from hiennu.planning.fingerprint import DatasetFingerprint
from hiennu.planning.grid import grid_unit, lossless_grid, memory_grid, paper_grid
from hiennu.planning.memory import estimate_training_memory
from hiennu.planning.plans import (DEFAULT_CONFIGURATION, PAPER_CONFIGURATION, ChannelNormalization,
                                   Configuration, NetworkPlan, Plans, TrainingPlan)
from hiennu.planning.roundtrip import RoundTrip

log = get_logger(__name__)

GRID_POLICIES = ("memory", "paper")
DEFAULT_GPU_MEMORY_GB = 16.0
ZADC_CLIP = 10.0
PREDICTION_NOTE = ("probabilities back to the native grid by nearest neighbour: on the 37 BONBID dev cases it "
                   "matched or beat linear at every grid (documentation/inference.md)")


def is_zmap_channel(name: str) -> bool:
    n = name.upper().replace("_", "").replace("-", "")
    return "ZADC" in n or n.startswith("Z")


def choose_normalization(index: int, name: str, fp: DatasetFingerprint) -> tuple[ChannelNormalization, str]:
    """The nnU-Net-style scheme for one channel, and a sentence saying why."""
    stats = fp.intensity[index]
    if is_zmap_channel(name):
        return (ChannelNormalization(name, "atlas_zscore", 0.0, 1.0, -ZADC_CLIP, ZADC_CLIP),
                f"{name}: a z-map against an atlas (name), so atlas_zscore: clip to [-{ZADC_CLIP:g}, {ZADC_CLIP:g}] "
                f"and keep its scale (ZADC < -2 keeps its meaning)")
    if "ADC" in name.upper():
        return (ChannelNormalization(name, "global_zscore", stats.mean, max(stats.std, 1e-8),
                                     stats.percentile_00_5, stats.percentile_99_5),
                f"{name}: a quantitative map (ADC, 10^-6 mm^2/s), so global_zscore with the dataset's brain "
                f"statistics: clip [{stats.percentile_00_5:.4g}, {stats.percentile_99_5:.4g}], "
                f"mean {stats.mean:.4g}, std {stats.std:.4g}")
    return (ChannelNormalization(name, "zscore_brain"),
            f"{name}: not a known quantitative map, so zscore_brain (per image, brain voxels)")


def _xyz(size_zyx: Sequence[int]) -> list[int]:
    return [int(v) for v in reversed(tuple(size_zyx))]


def plan_experiment(fp: DatasetFingerprint, grid_policy: str = "memory",
                    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
                    target_size_xyz: Sequence[int] | None = None) -> Plans:
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

    # 3d_fullres
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
    full_cfg = Configuration(
        name=DEFAULT_CONFIGURATION, target_size_xyz=_xyz(full_grid), grid_policy=policy,
        normalization=list(norms), network=network, training=training,
        label_interpolation="nearest", prediction_interpolation="nearest", notes="; ".join(full_notes))
    for cfg in (full_cfg, paper_cfg):
        log.info("plan %s: grid %s (x y z), policy %s", cfg.name, cfg.target_size_xyz, cfg.grid_policy)
    return Plans(dataset_name=fp.dataset_name, channel_names=channels,
                 configurations={DEFAULT_CONFIGURATION: full_cfg, PAPER_CONFIGURATION: paper_cfg},
                 hiennu_version=__version__)


def record_roundtrip(config: Configuration, roundtrip: RoundTrip) -> None:
    """Store the measured round-trip ceiling in ``config`` and log it."""
    config.roundtrip_dice_mean = round(roundtrip.mean, 4)
    config.roundtrip_dice_worst = round(roundtrip.worst, 4)
    worst_case = min(roundtrip.dice_per_case, key=roundtrip.dice_per_case.get) if roundtrip.dice_per_case else "-"
    log.info("round-trip ceiling of %s at %s (x y z), labels %s: mean Dice %.4f, worst %.4f (%s)",
             config.name, config.target_size_xyz, config.label_interpolation, roundtrip.mean, roundtrip.worst,
             worst_case)
