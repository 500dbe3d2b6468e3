"""Preprocessing: native case -> normalized 2-channel array (+ mask and properties).

Two kinds of configuration (see :class:`~hiennu.plans.Configuration`):

- whole-volume grid: every case is resampled to the plans' fixed grid.
- brain crop + planned spacing (``3d_fullres``): every case is cropped to its brain box and
  resampled to the target spacing (:mod:`~hiennu.geometry.cropping`), so arrays differ in
  size between cases; the :class:`~hiennu.geometry.cropping.CropRecord` that undoes it is kept
  in the properties, with up to :data:`LESION_LOCATIONS` lesion voxel positions (z, y, x) that the
  patch sampler centres foreground patches on.

:func:`preprocess_case` is the in-memory step shared with inference. :func:`preprocess_dataset`
runs it over a raw dataset's training cases and writes, per configuration folder::

    CASE.npy      float32 (C, z, y, x), normalized, on the grid (memory-mappable)
    CASE_seg.npy  uint8 (1, z, y, x) {0, 1}, on the grid
    CASE.json     properties: native geometry, sources, lesion size, source_signature,
                  and for patch configurations ``crop`` and ``lesion_locations``

Each file is written atomically; ``CASE.json`` is written last, so a case is complete exactly when
its properties exist with the current signature. Re-running skips such cases.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import crop_to_bbox

from hiennu.geometry.cropping import CropRecord, crop_and_resample, crop_and_resample_label
from hiennu.geometry.resampling import resample_image_to_grid, resample_label_to_grid
from hiennu.io.atomic import read_json, write_json, write_npy
from hiennu.io.cases import CaseFiles
from hiennu.io.channels import brain_channel
from hiennu.io.image import read_image
from hiennu.log import get_logger
from hiennu.parallel import parallel_map, register_preload
from hiennu.plans import Configuration, preprocessing_hash
from hiennu.preprocessing.normalization import normalize_channel

log = get_logger(__name__)
register_preload(__name__)  # its case functions run in worker processes

LESION_LOCATIONS = 10000
LOCATION_SEED = 1234


def brain_mask_on_grid(adc: np.ndarray, size_zyx) -> np.ndarray:
    """Brain (ADC != 0) of a native ``(z, y, x)`` ADC map, resampled to the grid (linear, >= 0.5).

    Linear whatever the plans' ``image_interpolation``: with nearest images about 0.5 % of the brain's grid voxels
    (its rim) differ from the nearest-resampled ADC != 0 on the BONBID dev cases; trained models were fitted so,
    and training and prediction share this function."""
    return resample_image_to_grid((np.asarray(adc) != 0).astype(np.float32), size_zyx) >= 0.5


def _check_inputs(images: list[np.ndarray], config: Configuration, label: np.ndarray | None) -> None:
    if len(images) != len(config.normalization):
        raise ValueError(f"configuration {config.name} normalizes {len(config.normalization)} channel(s), "
                         f"got {len(images)} image(s)")
    shapes = {tuple(np.shape(a)) for a in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"channels must be (z, y, x) arrays of one shape, got {sorted(shapes)}")
    if label is not None and tuple(np.shape(label)) != next(iter(shapes)):
        raise ValueError(f"label shape {np.shape(label)} differs from image shape {next(iter(shapes))}")


def preprocess_case(images: list[np.ndarray], config: Configuration, label: np.ndarray | None = None,
                    spacing_zyx=None) -> tuple[np.ndarray, np.ndarray | None, CropRecord | None]:
    """Resample, normalize and stack one case.

    images: one native ``(z, y, x)`` array per channel, in the order of ``config.normalization``; the
    non-zero voxels of the brain channel (:func:`hiennu.io.channels.brain_channel`: ADC) are the brain. label: native ``(z, y, x)`` mask or None. spacing_zyx: the native spacing (mm,
    z y x); needed by patch configurations only.
    Returns data ``(C, z, y, x)`` float32, seg ``(1, z, y, x)`` uint8 (None without a label), and
    for a patch configuration the :class:`CropRecord` (None for a whole-volume grid). The spatial
    shape is ``config.target_size_zyx``, or the brain box at the target spacing.
    """
    _check_inputs(images, config, label)
    stacked = np.stack([np.asarray(a, np.float32) for a in images])
    b = brain_channel([n.channel_name for n in config.normalization])
    record = None
    if config.is_patch_based:
        if spacing_zyx is None:
            raise ValueError(f"configuration {config.name} resamples to a target spacing: pass the case's spacing_zyx")
        grid, record = crop_and_resample(stacked, spacing_zyx, config.resampling_spacing_zyx, config.crop_to_brain,
                                         config.image_interpolation, brain_index=b)
        brain = brain_mask_on_grid(crop_to_bbox(stacked[b], record.bbox_zyx), grid.shape[1:])
    else:
        size = config.target_size_zyx
        grid = resample_image_to_grid(stacked, size, config.image_interpolation)
        brain = brain_mask_on_grid(images[b], size)
    data = np.stack([normalize_channel(grid[c], brain, norm) for c, norm in enumerate(config.normalization)])
    seg = None
    if label is not None:
        if record is not None:
            seg = crop_and_resample_label(label, record, config.label_interpolation)[None]
        else:
            seg = resample_label_to_grid(np.asarray(label) > 0, config.target_size_zyx, config.label_interpolation)[None]
    return data.astype(np.float32, copy=False), seg, record


def lesion_locations(seg: np.ndarray, seed: int = LOCATION_SEED, limit: int = LESION_LOCATIONS) -> list[list[int]]:
    """Up to ``limit`` lesion voxel positions ``[z, y, x]`` of a ``(1, z, y, x)`` or ``(z, y, x)`` mask, a seeded sample."""
    coords = np.argwhere(np.asarray(seg).reshape(np.shape(seg)[-3:]) > 0)
    if len(coords) > limit:
        coords = coords[np.sort(np.random.default_rng(seed).choice(len(coords), limit, replace=False))]
    return coords.astype(int).tolist()


def source_signature(case: CaseFiles, config: Configuration) -> dict:
    """Sizes and modification times of the case's files plus :func:`hiennu.plans.preprocessing_hash`."""
    files = [p for p in case.image_files] + ([case.label_file] if case.label_file else [])
    entries = []
    for p in files:
        st = os.stat(p)
        entries.append([Path(p).name, st.st_size, st.st_mtime_ns])
    return {"files": entries, "configuration": preprocessing_hash(config)}


def _is_up_to_date(out_dir: Path, case: CaseFiles, signature: dict) -> bool:
    props = out_dir / f"{case.case_id}.json"
    if not props.is_file() or not (out_dir / f"{case.case_id}.npy").is_file():
        return False
    if case.label_file is not None and not (out_dir / f"{case.case_id}_seg.npy").is_file():
        return False
    try:
        return read_json(props).get("source_signature") == signature
    except ValueError:
        return False


def is_preprocessed(case: CaseFiles, config: Configuration, out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds ``case`` preprocessed with ``config`` from its current files: its arrays and, written
    last, its ``CASE.json`` with the same source signature (:func:`source_signature`; an interrupted preprocessing
    or edited plans or files make it False)."""
    return _is_up_to_date(Path(out_dir), case, source_signature(case, config))


def preprocess_case_files(case: CaseFiles, config: Configuration, out_dir: str | os.PathLike) -> bool:
    """Preprocess one case's files into ``out_dir``; returns False when it was already up to date."""
    out = Path(out_dir)
    signature = source_signature(case, config)
    if _is_up_to_date(out, case, signature):
        return False
    images, geometries = [], []
    for path in case.image_files:
        array, geo = read_image(path)
        images.append(array)
        geometries.append(geo)
    reference = brain_channel([n.channel_name for n in config.normalization])
    geometry = geometries[reference]  # the ADC's, as prediction's outputs take (inference.layouts.read_case)
    label = None
    if case.label_file is not None:
        label, _ = read_image(case.label_file, dtype=np.uint8)
    data, seg, record = preprocess_case(images, config, label, geometry.spacing_zyx)
    brain_voxels = int(np.count_nonzero(images[reference]))
    lesion_voxels = int(np.count_nonzero(label)) if label is not None else 0
    write_npy(data, out / f"{case.case_id}.npy")
    if seg is not None:
        write_npy(seg, out / f"{case.case_id}_seg.npy")
    props = {"case_id": case.case_id, "geometry": geometry.to_dict(),
             "image_files": [str(p) for p in case.image_files],
             "label_file": str(case.label_file) if case.label_file else None,
             "brain_voxels": brain_voxels, "lesion_voxels": lesion_voxels,
             "lesion_fraction": lesion_voxels / brain_voxels if brain_voxels else 0.0,
             "has_lesion": lesion_voxels > 0, "source_signature": signature}
    if record is not None:
        props["crop"] = record.to_dict()
        props["lesion_locations"] = lesion_locations(seg) if seg is not None else []
    write_json(props, out / f"{case.case_id}.json")
    return True


def preprocess_dataset(cases: list[CaseFiles], config: Configuration, out_dir: str | os.PathLike,
                       num_processes: int = 2) -> tuple[int, int]:
    """Preprocess ``cases`` with ``config`` into ``out_dir``; returns (written, skipped as up to date)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = parallel_map(preprocess_case_files, [(c, config, out) for c in cases], num_processes,
                        desc=f"preprocess {config.name}")
    written = sum(bool(d) for d in done)
    log.info("preprocessed %s: %d case(s) written, %d up to date, in %s", config.name, written,
             len(done) - written, out)
    return written, len(done) - written

