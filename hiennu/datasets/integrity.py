"""Integrity check of a raw dataset: every problem named by case and file, before anything is written.

Checked: ``dataset.json`` readable and in agreement with the files (``numTraining``, channel count,
``file_ending``); every case has each channel and (in ``imagesTr``) a label; every file is a
readable, non-empty 3D image; channels and label lie on the same grid (size, spacing, origin,
direction, within the tolerance of :func:`hiennu.io.image.grid_differences`); voxel spacings are
positive and plausible (:func:`hiennu.io.image.spacing_problem`); image voxels are finite and not all zero; label voxels are 0 or 1; no
unknown extra files. Hidden files (names starting with ``.``) are ignored.

Headers are read first (``sitk.ImageFileReader.ReadImageInformation``), so a broken header is
reported without decoding voxels; every voxel is then checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hiennu.errors import DataIntegrityError, HiennuError
from hiennu.io.atomic import read_json
from hiennu.io.cases import CaseFiles, channel_file_name, discover_cases, parse_channel_file_name
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.io.image import (Geometry, direction_problem, header_spacing, image_ending, image_reader, sitk_reason,
                             spacing_problem, strip_ending, voxel_data_problem)
from hiennu.log import get_logger, progress

log = get_logger(__name__)

def _read_header(path: Path, case_id: str) -> tuple[sitk.ImageFileReader | None, Geometry | None, str | None]:
    """Reader with its header read, the geometry, or a problem string naming case and file."""
    if not path.is_file():  # a link whose target is gone is listed with the folder but cannot be read
        return None, None, f"case {case_id}: {path} not found (a broken link?); re-copy the file"
    if path.stat().st_size == 0:
        return None, None, f"case {case_id}: {path} is empty (0 bytes); re-export or re-copy it"
    damaged = voxel_data_problem(path)  # before ITK, which prints its own lines about a cut-off MetaImage
    if damaged:
        return None, None, f"case {case_id}: {path}: {damaged}, so it cannot be read; re-export or re-copy it"
    reader = image_reader(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        return None, None, f"case {case_id}: {path} cannot be read as an image: {sitk_reason(e)}"
    if reader.GetDimension() != 3:
        return None, None, f"case {case_id}: {path} is {reader.GetDimension()}D; hiennu needs 3D images"
    if direction_problem(reader.GetDirection(), path):
        return None, None, f"case {case_id}: {direction_problem(reader.GetDirection(), path)}"
    if reader.GetNumberOfComponents() != 1:
        return None, None, (f"case {case_id}: {path} has {reader.GetNumberOfComponents()} values per voxel; "
                            f"hiennu needs one (a scalar image)")
    geometry = Geometry(tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing()),
                        tuple(float(v) for v in reader.GetOrigin()), tuple(float(v) for v in reader.GetDirection()),
                        sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    if min(geometry.size_xyz) < 1:
        return None, None, f"case {case_id}: {path} has no voxels (size {geometry.size_xyz})"
    for spacing in (header_spacing(path), geometry.spacing_xyz):
        if spacing is not None and spacing_problem(spacing, path):
            return None, None, f"case {case_id}: {spacing_problem(spacing, path)}"
    return reader, geometry, None


def _read_voxels(reader: sitk.ImageFileReader, path: Path, case_id: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return sitk.GetArrayFromImage(reader.Execute()), None
    except RuntimeError as e:
        return None, f"case {case_id}: {path} voxel data cannot be read: {sitk_reason(e)}"


def check_case(case: CaseFiles, needs_label: bool, dj: DatasetJson) -> list[str]:
    """Problems of one case (missing files, unreadable files, grid mismatches, bad voxel values); ``dj`` (the raw
    dataset's) names a missing channel and its file ending."""
    problems: list[str] = []
    cid = case.case_id
    ending = dj.file_ending
    for c in case.missing_channels:
        present = next((f for f in case.image_files if f is not None), case.label_file)
        where = f" (found {present})" if present is not None else ""
        name = f" ({dj.channel_names[c]})" if c < len(dj.channel_names) else ""
        folder = present.parent.name if present is not None and present.parent.name != "labelsTr" else "imagesTr"
        problems.append(f"case {cid}: channel {c}{name} file {channel_file_name(cid, c, ending)} is missing{where}; "
                        f"add it to {folder}/, or remove the case's other files")
    if needs_label and case.label_file is None:
        first = next((f for f in case.image_files if f is not None), None)
        problems.append(f"case {cid}: label file labelsTr/{cid}{ending} is missing (images: {first}); add it, or "
                        f"remove the case's images")
    reference: tuple[Path, Geometry] | None = None
    files = [(f, False) for f in case.image_files if f is not None]
    if case.label_file is not None:
        files.append((case.label_file, True))
    for path, is_label in files:
        reader, geometry, problem = _read_header(path, cid)
        if problem:
            problems.append(problem)
            continue
        if reference is None:
            reference = (path, geometry)
        else:
            diffs = reference[1].differences(geometry)
            if diffs:
                problems.append(f"case {cid}: {path} is not on the grid of {reference[0]} ({'; '.join(diffs)})")
        array, problem = _read_voxels(reader, path, cid)
        if problem:
            problems.append(problem)
            continue
        problems.extend(_value_problems(array, path, cid, is_label))
    return problems


def _value_problems(array: np.ndarray, path: Path, cid: str, is_label: bool) -> list[str]:
    if is_label:
        values = np.unique(array)
        bad = values[(values != 0) & (values != 1)]
        if bad.size:
            shown = ", ".join(f"{float(v):g}" for v in bad[:8]) + (" ..." if bad.size > 8 else "")
            return [f"case {cid}: label {path} has values other than 0 and 1: {shown}; hiennu segments one lesion "
                    f"class: map the lesion's value to 1 and the rest to 0 (hiennu_convert_bonbid --label-map does "
                    f"it while converting the BONBID release)"]
        return []
    if not np.any(array):
        return [f"case {cid}: {path} is all zero ({array.size} voxels, no brain); the image is empty or was "
                f"exported wrongly; replace it or remove the case"]
    if array.dtype.kind != "f":
        return []
    finite = np.isfinite(array)
    if finite.all():
        return []
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.sum()) - n_nan
    return [f"case {cid}: {path} has {n_nan} NaN and {n_inf} infinite voxel(s); replace them (e.g. by 0 outside "
            f"the brain) before training"]


def _other_endings(folder: Path, file_ending: str) -> bool:
    """Whether ``folder`` holds images of another ending than ``file_ending`` (named one by one): when no case has
    the declared ending, they are the cases, so the count says nothing about numTraining."""
    return folder.is_dir() and any(image_ending(p) not in (None, file_ending) for p in folder.iterdir())


def _extra_files(folder: Path, dj: DatasetJson, label_folder: bool, known_cases: set[str]) -> list[str]:
    """Files in ``folder`` that are not a channel/label file of a known case with the declared ending."""
    problems = []
    if not folder.is_dir():
        return problems
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        ending = image_ending(path)
        if path.is_dir():
            problems.append(f"{path}: unexpected sub-folder in {folder.name}/; move it out of the dataset")
            continue
        if ending is None:
            problems.append(f"{path}: unknown file (not an image) in {folder.name}/; move it out of the dataset")
            continue
        if ending != dj.file_ending:
            problems.append(f"{path}: file ending {ending} but dataset.json says file_ending {dj.file_ending!r}; "
                            f"convert the file or fix dataset.json")
            continue
        stem = strip_ending(path)
        if label_folder:
            if stem not in known_cases:
                problems.append(f"case {stem}: label {path} has no images in imagesTr/ (expected "
                                f"{channel_file_name(stem, 0, dj.file_ending)} ...)")
            continue
        parsed = parse_channel_file_name(stem)
        if parsed is None:
            problems.append(f"{path}: name does not follow CASE_XXXX{dj.file_ending} (XXXX = channel number); "
                            f"rename or remove it")
        elif parsed[1] >= dj.num_channels:
            problems.append(f"case {parsed[0]}: {path} is channel {parsed[1]} but dataset.json "
                            f"declares {dj.num_channels} channel(s) ({', '.join(dj.channel_names)}); remove the "
                            f"file or add the channel to dataset.json")
    return problems


def check_raw_dataset(raw_dir: str | Path) -> list[str]:
    """All problems of the raw dataset at ``raw_dir``, one string each naming case and file (empty if clean).

    Cases are checked one after another: the 37 BONBID dev cases take under a second on one core,
    and a thread pool measured no faster (SimpleITK decoding holds the GIL).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        return [f"{raw_dir}: dataset folder not found"]
    try:
        dj = load_dataset_json(raw_dir)
    except HiennuError as e:
        return [str(e)]
    problems: list[str] = []
    images_tr, labels_tr, images_ts = raw_dir / "imagesTr", raw_dir / "labelsTr", raw_dir / "imagesTs"
    if not images_tr.is_dir():
        problems.append(f"{images_tr}: folder missing; training images go in imagesTr/CASE_0000{dj.file_ending}")
    if not labels_tr.is_dir():
        problems.append(f"{labels_tr}: folder missing; training labels go in labelsTr/CASE{dj.file_ending}")
    train = discover_cases(images_tr, dj.num_channels, labels_tr, file_ending=dj.file_ending)
    test = discover_cases(images_ts, dj.num_channels, None, file_ending=dj.file_ending) if images_ts.is_dir() else []
    with_images = {c.case_id for c in train if any(f is not None for f in c.image_files)}
    problems += _extra_files(images_tr, dj, False, with_images)
    problems += _extra_files(labels_tr, dj, True, with_images)
    problems += _extra_files(images_ts, dj, False, set())
    if "numTraining" not in read_json(raw_dir / "dataset.json"):
        problems.append(f"{raw_dir / 'dataset.json'}: has no numTraining; add \"numTraining\": {len(with_images)} "
                        f"(the count of cases in imagesTr/)")
    elif len(with_images) != dj.num_training and (with_images or not _other_endings(images_tr, dj.file_ending)):
        problems.append(f"{raw_dir / 'dataset.json'}: numTraining is {dj.num_training} but imagesTr/ holds "
                        f"{len(with_images)} case(s); fix numTraining")
    jobs = [(c, True) for c in train if c.case_id in with_images] + [(c, False) for c in test]
    for case, needs_label in progress(jobs, desc="checking dataset"):
        problems.extend(check_case(case, needs_label, dj))
    return problems


def verify_raw_dataset(raw_dir: str | Path) -> None:
    """Raise :class:`DataIntegrityError` listing every problem of the raw dataset at ``raw_dir``."""
    problems = check_raw_dataset(raw_dir)
    if problems:
        raise DataIntegrityError(problems, header=f"dataset integrity check of {raw_dir} failed")
    log.info("dataset integrity check of %s passed", raw_dir)
