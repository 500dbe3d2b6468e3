"""Overlay PNGs: each case's predicted mask (and reference, when given) drawn on one axial slice of its image, for
looking at predictions case by case (``hiennu_plot_overlay``; nnU-Net's ``nnUNetv2_plot_overlay_pngs`` draws the
training labels the same way).

Per case, ``OUT/CASE.png``: the slice (z) with the most reference voxels, else the most predicted voxels, else the
middle one; the image channel (ADC by default) in grey, cropped to the brain (the in-plane box of the image's
non-zero voxels), at the voxel spacing's aspect ratio; the reference as a green contour, the prediction as an orange
one; the title names the case, the slice and, with a reference, the case's Dice over the whole volume. Arrays are
``(z, y, x)`` on the case's native grid.

Every case is read and checked first (the image channel found as ``CASE_000K.<ending>``, nnU-Net's layout, the mask
binary and on the image's grid, the reference too), keeping only the slice to draw; the PNGs are written after, each atomically,
so a bad case stops the run before any picture is written. Inputs are never written to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hiennu.errors import HiennuError
from hiennu.evaluation.evaluate import mask_files
from hiennu.evaluation.report import brain_box_yx, save_png
from hiennu.io.bonbid_names import BONBID_ADC_DIR, BONBID_ZADC_DIR, bonbid_role
from hiennu.io.cases import discover_cases
from hiennu.io.channels import ADC, ZADC, channel_index
from hiennu.io.dataset_json import BONBID_CHANNELS, load_dataset_json
from hiennu.io.folders import folder_relation, refuse_raw_data_output
from hiennu.io.image import (image_ending, is_probability_image, read_binary_mask, read_finite_image,
                             strip_ending)
from hiennu.log import get_logger, progress
from hiennu.masks import dice
from hiennu.paths import DATASET_FILE

log = get_logger(__name__)

REFERENCE_COLOUR, PREDICTION_COLOUR = "C2", "C1"  # green, orange


def overlay_slice(prediction: np.ndarray, reference: np.ndarray | None = None) -> int:
    """The axial (z) index to draw: the most reference voxels, else the most predicted ones, else the middle."""
    for mask in (reference, prediction):
        if mask is not None:
            per_slice = np.asarray(mask != 0).reshape(mask.shape[0], -1).sum(axis=1)
            if per_slice.any():
                return int(np.argmax(per_slice))
    return int(prediction.shape[0] // 2)


@dataclass
class OverlayCase:
    """What one PNG draws: the image slice, the masks' slices (cropped alike, ``(y, x)``), the in-plane spacing
    ratio y/x, and the title."""

    case_id: str
    image: np.ndarray
    prediction: np.ndarray
    reference: np.ndarray | None
    aspect: float
    title: str


def overlay_case(case_id: str, image: np.ndarray, prediction: np.ndarray, spacing_zyx: Sequence[float],
                 reference: np.ndarray | None = None, channel_name: str = "ADC") -> OverlayCase:
    """The slice of :func:`overlay_slice`, cropped to the brain box of ``image`` (all ``(z, y, x)``, one shape)."""
    for name, mask in (("prediction", prediction), ("reference", reference)):
        if mask is not None and np.shape(mask) != np.shape(image):
            raise HiennuError(f"case {case_id}: the {name} has shape {np.shape(mask)}, the image {np.shape(image)}")
    z = overlay_slice(prediction, reference)
    box_y, box_x = brain_box_yx(image)
    title = f"{case_id}, z = {z}, {channel_name}"
    if reference is not None:
        title += f", Dice {dice(reference, prediction):.3f}"
    return OverlayCase(case_id, np.asarray(image[z, box_y, box_x], np.float32), np.asarray(prediction[z, box_y, box_x]),
                       None if reference is None else np.asarray(reference[z, box_y, box_x]),
                       float(spacing_zyx[1]) / float(spacing_zyx[2]), title)


def plot_overlay(case: OverlayCase, path: str | Path) -> None:
    """Write ``case`` as a PNG (atomically)."""
    figure = Figure(figsize=(4.0, 4.4), dpi=100)
    ax = figure.subplots()
    brain = case.image[case.image != 0]
    vmax = float(np.percentile(brain, 99.5)) if brain.size else 1.0
    ax.imshow(case.image, cmap="gray", vmin=0 if brain.size and brain.min() >= 0 else None, vmax=vmax,
              aspect=case.aspect, interpolation="nearest")
    handles = []
    for mask, colour, label in ((case.reference, REFERENCE_COLOUR, "reference"),
                                (case.prediction, PREDICTION_COLOUR, "prediction")):
        if mask is None:
            continue
        handles.append(Line2D([], [], color=colour, label=label))
        if np.any(mask) and not np.all(mask):
            ax.contour(np.asarray(mask != 0, np.float32), levels=[0.5], colors=colour, linewidths=1.0)
        elif np.all(mask):
            ax.add_patch(_frame(mask.shape, colour))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(case.title, fontsize=9)
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    save_png(figure, path)


def _frame(shape: tuple[int, ...], colour: str):
    """A mask that fills the whole slice has no contour inside it: its outline is the frame."""
    from matplotlib.patches import Rectangle
    return Rectangle((-0.5, -0.5), shape[1], shape[0], fill=False, edgecolor=colour, linewidth=2.0)


def _channel_names(images_dir: Path) -> list[str]:
    """The channel names of ``images_dir``'s cases: a ``dataset.json`` in it or beside it, else BONBID's order."""
    for folder in (images_dir, images_dir.parent):
        if (folder / DATASET_FILE).is_file():
            return list(load_dataset_json(folder).channel_names)
    return list(BONBID_CHANNELS)


def _mask_files(folder: Path) -> dict[str, Path]:
    """Case id -> its mask file ``CASE.<ending>`` in ``folder`` (probability images ``CASE_prob.*`` left out)."""
    return {strip_ending(path): path for path in sorted(folder.iterdir())
            if path.is_file() and image_ending(path) and not path.name.startswith(".") and not is_probability_image(path)}


def _bonbid_images(images_dir: Path, role: str) -> dict[str, Path]:
    """Case id -> its ``role`` (ADC or ZADC) file under BONBID's own names, flat in ``images_dir`` or in the
    release's ``1ADC_ss/`` and ``2Z_ADC/`` (as hiennu_predict and hiennu_evaluate read them)."""
    found: dict[str, Path] = {}
    for folder in (images_dir, images_dir / BONBID_ADC_DIR, images_dir / BONBID_ZADC_DIR):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            parsed = bonbid_role(path) if path.is_file() and image_ending(path) else None
            if parsed is not None and parsed[0] == role:
                found.setdefault(parsed[1], path)
    return found


def _check_folders(images_dir: Path, pred_dir: Path, out_dir: Path, labels_dir: Path | None) -> None:
    """Each input folder exists, and the output folder is none of them nor inside one (or around one)."""
    for flag, folder in (("-i", images_dir), ("-p", pred_dir), ("-r", labels_dir)):
        if folder is None:
            continue
        if not folder.is_dir():
            raise HiennuError(f"{flag} {folder}: folder not found")
        if folder_relation(out_dir, folder) is not None:
            raise HiennuError(f"-o {out_dir} is, holds or lies in the input folder {folder} ({flag}); choose an "
                              f"output folder apart from the inputs")
    refuse_raw_data_output("-o", out_dir)


def plot_overlays(images_dir: str | Path, pred_dir: str | Path, out_dir: str | Path,
                  labels_dir: str | Path | None = None, channel: str = "ADC",
                  case_ids: Sequence[str] | None = None) -> list[str]:
    """``OUT/CASE.png`` for every mask ``CASE.<ending>`` of ``pred_dir`` (or ``case_ids`` among them); see the
    module docstring. images_dir: the cases' images, ``CASE_0000.<ending>`` ... (nnU-Net's layout) or, for ADC and
    ZADC, BONBID's own names (flat or in the release's ``1ADC_ss/`` and ``2Z_ADC/``); labels_dir: the references
    ``CASE.<ending>`` or ``CASE_lesion.<ending>`` (every plotted case needs one); channel: the image channel drawn.
    Returns the case ids plotted."""
    images_dir, pred_dir, out_dir = Path(images_dir), Path(pred_dir), Path(out_dir)
    labels_dir = None if labels_dir is None else Path(labels_dir)
    _check_folders(images_dir, pred_dir, out_dir, labels_dir)
    names = _channel_names(images_dir)
    k = channel_index(names, channel)
    if k is None:
        raise HiennuError(f"--channel {channel}: the images' channels are {', '.join(names)} (dataset.json in or "
                          f"beside {images_dir}, else BONBID's order); choose one of them")
    masks = _mask_files(pred_dir)
    if case_ids is not None:
        missing = sorted(set(case_ids) - set(masks))
        if missing:
            raise HiennuError(f"-p {pred_dir}: no mask of case(s) {', '.join(missing)}")
        masks = {c: masks[c] for c in case_ids}
    if not masks:
        raise HiennuError(f"-p {pred_dir}: no masks (CASE.mha, CASE.nii.gz ...)")
    images = {c.case_id: c.image_files[k] for c in discover_cases(images_dir, len(names)) if c.image_files[k]}
    role = next((r for r in (ADC, ZADC) if channel_index([names[k]], r) is not None), None)
    if role is not None:  # BONBID's own names too, as hiennu_predict and hiennu_evaluate read them
        images = {**_bonbid_images(images_dir, role), **images}
    references = {} if labels_dir is None else mask_files(labels_dir, "reference")
    cases = []
    for case_id, mask_file in progress(sorted(masks.items()), desc="checking"):
        if case_id not in images:
            raise HiennuError(f"case {case_id}: no {names[k]} image {case_id}_{k:04d}.<ending>"
                              f"{' or BONBID-named ' + role + ' file' if role else ''} in {images_dir}")
        image, geometry = read_finite_image(images[case_id], f"case {case_id}: image")
        prediction, mask_geometry = read_binary_mask(mask_file, f"case {case_id}: prediction")
        reference = None
        if labels_dir is not None:
            if case_id not in references:
                raise HiennuError(f"case {case_id}: no reference {case_id}.<ending> or {case_id}_lesion.<ending> in "
                                  f"-r {labels_dir}")
            reference, reference_geometry = read_binary_mask(references[case_id], f"case {case_id}: reference")
            _same_grid(case_id, references[case_id], reference_geometry, geometry)
        _same_grid(case_id, mask_file, mask_geometry, geometry)
        cases.append(overlay_case(case_id, image, prediction, geometry.spacing_zyx, reference, names[k]))
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in progress(cases, desc="plotting"):
        plot_overlay(case, out_dir / f"{case.case_id}.png")
    log.info("%d overlay(s) of %s on %s written to %s", len(cases), pred_dir, names[k], out_dir)
    return [c.case_id for c in cases]


def _same_grid(case_id: str, path: Path, geometry, image_geometry) -> None:
    diffs = image_geometry.differences(geometry)
    if diffs:
        raise HiennuError(f"case {case_id}: {path} lies on another grid than the case's image ({'; '.join(diffs)})")


__all__ = ["OverlayCase", "overlay_case", "overlay_slice", "plot_overlay", "plot_overlays"]
