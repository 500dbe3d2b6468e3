"""Brain crop and planned spacing: the geometric half of ``3d_fullres`` preprocessing, and its inverse.

Forward (:func:`crop_and_resample`): crop a native case ``(C, z, y, x)`` to its brain box (the
half-open box of ADC != 0 voxels, acvl-utils' ``get_bbox_from_mask`` / ``crop_to_bbox``, the same
helpers nnU-Net v2 uses), then resample the box to the target spacing (mm, z y x) in index space
with :func:`~hiennu.geometry.resampling.resample_image_to_grid`: the resampled box covers the
same physical extent, so its size per axis is ``round(box_size * native_spacing / target_spacing)``.

Inverse (:func:`restore_to_native`): resample a map on the resampled box back to the box's native
size and paste it into a zero volume of the case's native size (acvl-utils'
``insert_crop_into_image``). Everything outside the brain box is background (probability 0).

:class:`CropRecord` is what prediction needs to undo the forward step exactly; it is stored in
each preprocessed case's properties.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_to_bbox, get_bbox_from_mask, insert_crop_into_image

from hiennu.geometry.resampling import (resample_image_to_grid, resample_label_to_grid,
                                              resample_probabilities_to_native)


@dataclass
class CropRecord:
    """How one case went from its native grid to the preprocessed array.

    native_size_zyx: the native array's shape. bbox_zyx: the brain box ``[[start, end), ...]`` in
    native voxels (z, y, x). resampled_size_zyx: the box's shape after resampling to the target
    spacing (the preprocessed array's spatial shape).
    """

    native_size_zyx: list[int]
    bbox_zyx: list[list[int]]
    resampled_size_zyx: list[int]

    @property
    def box_size_zyx(self) -> tuple[int, int, int]:
        return tuple(int(e - s) for s, e in self.bbox_zyx)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CropRecord":
        return cls([int(v) for v in d["native_size_zyx"]], [[int(s), int(e)] for s, e in d["bbox_zyx"]],
                   [int(v) for v in d["resampled_size_zyx"]])


def brain_bbox(adc: np.ndarray) -> list[list[int]]:
    """Half-open box ``[[z0, z1], [y0, y1], [x0, x1]]`` of the non-zero voxels of a ``(z, y, x)`` map.

    An all-zero map gives the whole volume (nothing to crop to; integrity checks refuse such cases
    before this is reached).
    """
    mask = np.asarray(adc) != 0
    if not mask.any():
        return [[0, int(n)] for n in mask.shape]
    return [[int(s), int(e)] for s, e in get_bbox_from_mask(mask)]


def resampled_size(box_size_zyx: Sequence[int], spacing_zyx: Sequence[float],
                   target_spacing_zyx: Sequence[float | None]) -> tuple[int, int, int]:
    """Voxels per axis of a box of ``box_size_zyx`` voxels at ``spacing_zyx`` mm once at ``target_spacing_zyx`` mm.

    A target of ``None`` keeps that axis as it is (a ``2d`` configuration keeps each case's slices).
    """
    return tuple(int(n) if t is None else max(1, int(round(n * s / t)))  # type: ignore[return-value]
                 for n, s, t in zip(box_size_zyx, spacing_zyx, target_spacing_zyx))


def crop_and_resample(images: np.ndarray, spacing_zyx: Sequence[float],
                      target_spacing_zyx: Sequence[float | None], crop: bool = True,
                      interpolation: str = "linear", brain_index: int = 0) -> tuple[np.ndarray, CropRecord]:
    """Crop ``images`` (C, z, y, x) to the box of channel ``brain_index``'s non-zero voxels (the brain: the
    caller says which channel, :func:`hiennu.io.channels.brain_channel`) and resample to the target spacing
    (``None`` on an axis: keep the case's own spacing there).

    Returns float32 ``(C, z', y', x')`` (``interpolation``: ``linear`` or ``nearest``, see
    :func:`~hiennu.geometry.resampling.resample_image_to_grid`) and the :class:`CropRecord`.
    ``crop=False`` keeps the whole volume (the box is the full extent).
    """
    images = np.asarray(images, dtype=np.float32)
    native = [int(n) for n in images.shape[1:]]
    bbox = brain_bbox(images[brain_index]) if crop else [[0, n] for n in native]
    box = crop_to_bbox(images, [[0, images.shape[0]]] + bbox)
    size = resampled_size(box.shape[1:], spacing_zyx, target_spacing_zyx)
    out = resample_image_to_grid(box, size, interpolation)
    return out, CropRecord(native, bbox, list(size))


def crop_and_resample_label(label: np.ndarray, record: CropRecord, interpolation: str = "nearest") -> np.ndarray:
    """A native mask ``(z, y, x)`` cropped to ``record``'s box and resampled to its size; uint8 {0, 1}.
    interpolation: ``nearest`` or ``sdf`` (the plans' ``label_interpolation``;
    :func:`~hiennu.geometry.resampling.resample_label_to_grid`)."""
    box = crop_to_bbox(np.asarray(label) > 0, record.bbox_zyx)
    return resample_label_to_grid(box, record.resampled_size_zyx, interpolation)


def restore_to_native(values: np.ndarray | torch.Tensor, record: CropRecord,
                      mode: str = "linear") -> np.ndarray | torch.Tensor:
    """Undo :func:`crop_and_resample` for a map ``(z', y', x')`` on the resampled box (probabilities).

    The map is resampled to the box's native size (``mode``: ``linear`` or ``nearest``) and pasted
    into zeros of the native size. numpy in gives numpy out; a tensor stays on its device.
    """
    box = resample_probabilities_to_native(values, record.box_size_zyx, mode)
    if isinstance(box, torch.Tensor):
        full = torch.zeros(tuple(record.native_size_zyx), dtype=box.dtype, device=box.device)
    else:
        full = np.zeros(tuple(record.native_size_zyx), dtype=box.dtype)
    return insert_crop_into_image(full, box, record.bbox_zyx)
