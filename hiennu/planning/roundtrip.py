"""The round-trip ceiling of a target grid: native label -> grid -> native, scored with Dice.

A perfect prediction on the grid can do no better than this once it is resampled back to the
native grid, so the planner records it for each configuration. Dice is :func:`hiennu.masks.dice`
(two empty masks score 1).

- whole-volume grid: the label goes to the grid with the configuration's label interpolation and
  comes back with the same mode (:func:`measure_roundtrip`).
- brain crop + target spacing (``3d_fullres``): the label is cropped to the brain box of the ADC map,
  resampled to the target spacing with the configuration's label interpolation (as preprocessing does;
  the planner writes ``nearest``), then taken back the
  way prediction takes probabilities: resampled to the box with the configuration's
  ``prediction_interpolation``, pasted into the native volume, thresholded at 0.5
  (:func:`measure_crop_roundtrip`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hiennu.geometry.cropping import (CropRecord, brain_bbox, crop_and_resample_label, resampled_size,
                                      restore_to_native)
from hiennu.geometry.resampling import resample_label_to_grid, resample_label_to_native
from hiennu.io.image import read_image
from hiennu.masks import dice
from hiennu.parallel import parallel_map, register_preload

register_preload(__name__)  # its case functions run in worker processes


@dataclass
class RoundTrip:
    """Per-case Dice of the round trip and its mean and worst value."""

    size_zyx: tuple[int, int, int]
    mode: str
    dice_per_case: dict[str, float]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.dice_per_case.values()))) if self.dice_per_case else 1.0

    @property
    def worst(self) -> float:
        return float(np.min(list(self.dice_per_case.values()))) if self.dice_per_case else 1.0


def label_roundtrip_dice(label: np.ndarray, size_zyx: Sequence[int], mode: str) -> float:
    """Dice between a native label ``(z, y, x)`` and its trip to ``size_zyx`` and back."""
    back = resample_label_to_native(resample_label_to_grid(label, size_zyx, mode), label.shape, mode)
    return dice(label, back)


def _file_roundtrip(path: str | os.PathLike, size_zyx: tuple[int, int, int], mode: str) -> float:
    label, _ = read_image(path, dtype=np.uint8)
    return label_roundtrip_dice(label, size_zyx, mode)


def measure_roundtrip(label_files: dict[str, str | os.PathLike], size_zyx: Sequence[int], mode: str,
                      num_processes: int = 1) -> RoundTrip:
    """Round-trip Dice of every case in ``label_files`` (case id -> label file)."""
    size = tuple(int(s) for s in size_zyx)
    ids = sorted(label_files)
    values = parallel_map(_file_roundtrip, [(label_files[i], size, mode) for i in ids], num_processes,
                          desc=f"round trip {mode} {size}")
    return RoundTrip(size, mode, dict(zip(ids, values)))  # type: ignore[arg-type]


def crop_roundtrip_dice(adc: np.ndarray, label: np.ndarray, spacing_zyx: Sequence[float],
                        target_spacing_zyx: Sequence[float], mode: str, label_mode: str = "nearest") -> float:
    """Dice between a native label and its trip through brain crop + target spacing and back (module docstring).

    mode: the way back (``prediction_interpolation``); label_mode: the way there (``label_interpolation``)."""
    bbox = brain_bbox(adc)  # the record crop_and_resample would make, without resampling the image
    box = [e - s for s, e in bbox]
    record = CropRecord(list(np.shape(adc)), bbox, list(resampled_size(box, spacing_zyx, target_spacing_zyx)))
    on_target = crop_and_resample_label(label, record, label_mode).astype(np.float32)
    back = restore_to_native(on_target, record, mode) >= 0.5
    return dice(label, back)


def _file_crop_roundtrip(adc_path: str | os.PathLike, label_path: str | os.PathLike,
                         target_spacing_zyx: tuple[float, float, float], mode: str, label_mode: str) -> float:
    adc, geometry = read_image(adc_path)
    label, _ = read_image(label_path, dtype=np.uint8)
    return crop_roundtrip_dice(adc, label, geometry.spacing_zyx, target_spacing_zyx, mode, label_mode)


def measure_crop_roundtrip(cases: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
                           target_spacing_zyx: Sequence[float], mode: str, num_processes: int = 1,
                           label_mode: str = "nearest") -> RoundTrip:
    """Round-trip Dice through brain crop + target spacing of every case (case id -> (ADC file, label file));
    ``mode`` the way back, ``label_mode`` the way there (:func:`crop_roundtrip_dice`)."""
    spacing = tuple(None if s is None else float(s) for s in target_spacing_zyx)  # None: keep the case's own
    ids = sorted(cases)
    values = parallel_map(_file_crop_roundtrip, [(*cases[i], spacing, mode, label_mode) for i in ids], num_processes,
                          desc=f"round trip crop + spacing {spacing} mm")
    return RoundTrip((0, 0, 0), f"crop+spacing, back {mode}", dict(zip(ids, values)))  # type: ignore[arg-type]
