"""Scoring a folder of predicted masks against a folder of reference masks.

Files are matched by case id: ``CASE.mha`` / ``CASE.nii.gz`` / ... (nnU-Net names) or the official
BONBID label name ``CASE_lesion.mha``. Every reference case is scored unless ``case_ids`` picks
a subset; a missing prediction, a non-binary mask or a prediction on another grid is an error that
names the case and file. The brain volume of a case (non-zero voxels of its ADC map), which sets
the lesion volume band, comes from ``images_dir`` (``CASE_0000.*`` or the official
``CASE-ADC_ss.mha``, also inside a ``1ADC_ss/`` subfolder); without ``images_dir`` the bands are
not computed and ``summary["bands"]`` is None.
"""

from __future__ import annotations

import csv
import io
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.evaluation.metrics import CHALLENGE_2023_NOTE, NSD_TOLERANCE_MM, SUMMARY_METRICS, case_metrics
from hiennu.io.atomic import read_json, write_json, write_text
from hiennu.io.bonbid_names import BONBID_ADC_DIR, bonbid_role
from hiennu.io.cases import parse_channel_file_name
from hiennu.io.folders import INSIDE, IS, folder_relation, raw_data_folder
from hiennu.io.image import image_ending, read_binary_mask, read_finite_image, strip_ending
from hiennu.log import get_logger, progress
from hiennu.masks import NO_LESION_BAND, VOLUME_BANDS
from hiennu.provenance import provenance

logger = get_logger(__name__)

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 12345
CORRECT_SPACING_NOTE = "surface metrics use each image's spacing in mm, matched to the array axes (physically correct)"
NO_BANDS_NOTE = ("no images folder given: brain volumes unknown, so lesion fractions and volume bands "
                 "were not computed (pass images_dir / -img)")


def summarize(values: Iterable[float], seed: int = BOOTSTRAP_SEED, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """Mean, median, std (ddof=1), seeded 95% percentile-bootstrap interval of the mean, over the non-NaN values.

    ``n`` counts the values used, ``n_undefined`` the NaN/None values left out. Statistics that
    need more values than there are (std of one value, anything of none) are NaN.
    """
    raw = [float("nan") if v is None else float(v) for v in values]
    vals = np.array([v for v in raw if not math.isnan(v)], dtype=np.float64)
    out = {"mean": float("nan"), "median": float("nan"), "std": float("nan"),
           "ci95_low": float("nan"), "ci95_high": float("nan"), "n": int(vals.size),
           "n_undefined": len(raw) - int(vals.size)}
    if vals.size == 0:
        return out
    out.update(mean=float(vals.mean()), median=float(np.median(vals)))
    if vals.size > 1:
        out["std"] = float(vals.std(ddof=1))
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, vals.size, size=(samples, vals.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    out.update(ci95_low=float(low), ci95_high=float(high))
    return out


def mask_files(folder: Path, what: str) -> dict[str, Path]:
    """Case id -> mask file in ``folder`` (nnU-Net ``CASE.ext`` or BONBID ``CASE_lesion.ext``)."""
    if not folder.is_dir():
        raise HiennuError(f"{what} folder {folder} does not exist; check the path")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or image_ending(p) is None:
            continue
        role = bonbid_role(p)
        case = role[1] if role is not None and role[0] == "label" else strip_ending(p)
        if case in found:
            raise HiennuError(f"case {case}: two {what} files, {found[case].name} and {p.name}, in {folder}; "
                              f"keep one")
        found[case] = p
    return found


def _brain_image_files(images_dir: Path) -> dict[str, Path]:
    """Case id -> ADC (channel 0) file in ``images_dir`` or its ``1ADC_ss/`` subfolder."""
    if not images_dir.is_dir():
        raise HiennuError(f"images folder {images_dir} does not exist; check the path")
    found: dict[str, Path] = {}
    folders = [images_dir] + ([images_dir / BONBID_ADC_DIR] if (images_dir / BONBID_ADC_DIR).is_dir() else [])
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if p.name.startswith(".") or not p.is_file() or image_ending(p) is None:
                continue
            role = bonbid_role(p)
            channel = parse_channel_file_name(p)
            if role is not None and role[0] == "ADC":
                found.setdefault(role[1], p)
            elif channel is not None and channel[1] == 0:
                found.setdefault(channel[0], p)
    return found


def _binary_mask(path: Path, case_id: str, what: str):
    array, geometry = read_binary_mask(path, f"case {case_id}: {what} file")
    return array != 0, geometry


def _score_case(job: tuple) -> dict:
    case_id, ref_path, pred_path, image_path, challenge_2023 = job
    ref, ref_geometry = _binary_mask(ref_path, case_id, "reference")
    pred, pred_geometry = _binary_mask(pred_path, case_id, "prediction")
    # same grid within hiennu.io.image's tolerance; the metrics then use the reference's geometry
    diffs = ref_geometry.differences(pred_geometry)
    if diffs:
        raise HiennuError(f"case {case_id}: prediction {pred_path} lies on another grid than reference "
                          f"{ref_path} ({'; '.join(diffs)}, reference first); predictions must be in the "
                          f"reference's native geometry (resample the prediction, or check the files match)")
    brain_voxels = None
    if image_path is not None:
        image, image_geometry = read_finite_image(image_path, f"case {case_id}: image")
        diffs = ref_geometry.differences(image_geometry)
        if diffs:
            raise HiennuError(f"case {case_id}: image {image_path} lies on another grid than reference "
                              f"{ref_path} ({'; '.join(diffs)}, reference first); give the images of these labels")
        brain_voxels = int(np.count_nonzero(image))
    metrics = case_metrics(ref, pred, ref_geometry.spacing_zyx, brain_voxels=brain_voxels,
                           challenge_2023=challenge_2023)
    return {"case_id": case_id, "reference_file": str(ref_path), "prediction_file": str(pred_path), **metrics}


def _jobs(ref_dir: Path, pred_dir: Path, images_dir: Path | None, case_ids: Sequence[str] | None,
          challenge_2023: bool) -> list[tuple]:
    refs = mask_files(ref_dir, "reference")
    preds = mask_files(pred_dir, "prediction")
    if case_ids is None:
        wanted = sorted(refs)
        if not wanted:
            raise HiennuError(f"reference folder {ref_dir} holds no mask files (.mha, .nii.gz, .nii, .nrrd, .mhd)")
    else:
        wanted = list(case_ids)
        if not wanted:
            raise HiennuError("no case to score: case_ids is empty (leave it out to score every reference case)")
        twice = sorted({c for c in wanted if wanted.count(c) > 1})
        if twice:
            raise HiennuError(f"case(s) {', '.join(twice)} named twice in case_ids / --cases; each would count twice "
                              f"in every mean")
        no_ref = [c for c in wanted if c not in refs]
        if no_ref:
            raise HiennuError(f"no reference mask for case(s) {', '.join(no_ref)} in {ref_dir}")
    missing = [c for c in wanted if c not in preds]
    if missing:
        raise HiennuError(f"no prediction for {len(missing)} case(s) in {pred_dir}: {', '.join(missing[:20])}"
                          f"{' ...' if len(missing) > 20 else ''} (expected e.g. {missing[0]}.mha); predict them, "
                          f"or evaluate a subset with case_ids / --cases")
    extra = sorted(set(preds) - set(wanted))
    if extra:
        # a warning when the folders disagree; only a note when the caller chose the cases (case_ids / --cases)
        report = logger.warning if case_ids is None else logger.info
        report("%d prediction(s) without a case to score were ignored: %s", len(extra), ", ".join(extra[:10]))
    images: dict[str, Path] = {}
    if images_dir is not None:
        images = _brain_image_files(images_dir)
        no_image = [c for c in wanted if c not in images]
        if no_image:
            raise HiennuError(f"no ADC image (CASE_0000.* or CASE-ADC_ss.*) for case(s) {', '.join(no_image[:20])} "
                              f"in {images_dir}; give the folder with these cases' images, or leave out the "
                              f"images folder (then volume bands are not computed)")
    return [(c, refs[c], preds[c], images.get(c), challenge_2023) for c in wanted]


def _band_results(rows: list[dict]) -> dict:
    bands = {}
    for name in [b[0] for b in VOLUME_BANDS] + [NO_LESION_BAND]:
        members = [r for r in rows if r["band"] == name]
        bands[name] = {"num_cases": len(members), "case_ids": [r["case_id"] for r in members],
                       "metrics": {m: summarize(r[m] for r in members) for m in SUMMARY_METRICS}}
    return bands


def json_safe(obj):
    """``obj`` with NaN and infinities as None (JSON has no NaN), dicts, lists and tuples walked."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def per_case_csv_path(output_json: str | os.PathLike) -> Path:
    """The per-case CSV written beside ``output_json``: ``summary.json`` -> ``summary_per_case.csv``."""
    output_json = Path(output_json)
    return output_json.with_name(output_json.stem + "_per_case.csv")


def write_per_case_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Write per-case rows as CSV atomically (NaN as ``nan``, None as an empty cell)."""
    if not rows:
        raise ValueError("no rows to write")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    write_text(buffer.getvalue(), path)


def _parse_cell(text: str):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_per_case_csv(path: str | os.PathLike) -> list[dict]:
    """Read a per-case CSV written by :func:`write_per_case_csv` back into rows of Python values."""
    with open(path, newline="") as f:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _check_folders(ref_dir: Path, pred_dir: Path, images: Path | None, output_json: str | os.PathLike | None) -> None:
    """Refuse a comparison of a folder with itself, and a summary that would overwrite an input or land in the
    references' or images' folder (where it would break a dataset); the predictions' folder takes it by default."""
    if ref_dir.resolve() == pred_dir.resolve():
        raise HiennuError(f"-ref and -pred are the same folder ({ref_dir}): the masks would be scored against "
                          f"themselves; give the folder of predicted masks as -pred")
    if output_json is None:
        return
    out = Path(output_json)
    if out.is_dir():
        raise HiennuError(f"-o {output_json} is a folder; give the summary file to write, e.g. {out / 'summary.json'}")
    if image_ending(out) is not None:
        raise HiennuError(f"-o {output_json} is an image name; the summary is JSON: give e.g. "
                          f"{pred_dir / 'summary.json'} (inputs are never overwritten)")
    for written in (out, per_case_csv_path(out)):
        for name, folder in (("-ref", ref_dir), ("-img", images)):
            if folder is not None and folder_relation(written.parent, folder) in (IS, INSIDE):
                raise HiennuError(f"-o {output_json}: {written.name} would be written into the {name} folder "
                                  f"{folder}, among the inputs; write the summary elsewhere (by default "
                                  f"{pred_dir / 'summary.json'})")
    raw = raw_data_folder(out.parent)
    if raw is not None:
        raise HiennuError(f"-o {output_json}: the summary would be written into {raw}, the {raw.name} folder of a raw "
                          f"dataset (were -ref and -pred given the other way round? the references come first); "
                          f"write it elsewhere with -o")
    if out.is_file() and not _is_evaluate_summary(out):
        raise HiennuError(f"{output_json}: the summary would replace this file, which is no summary of hiennu_evaluate "
                          f"(a fold's validation summary, a dataset's or another tool's file?); name another file "
                          f"with -o")


#: the keys of the summary hiennu_evaluate writes (:func:`evaluate_folders`)
SUMMARY_KEYS = frozenset({"challenge_2023", "note", "reference_dir", "prediction_dir", "images_dir", "nsd_tolerance_mm",
                          "num_cases", "metrics", "bands", "bands_note", "per_case", "provenance"})


def _is_evaluate_summary(path: Path) -> bool:
    """Whether ``path`` holds a summary that hiennu_evaluate wrote (and no key it does not write): the only file its
    -o replaces. A fold's ``validation/summary.json`` also records its checkpoint, which it would lose."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"metrics", "per_case"} <= data.keys() <= SUMMARY_KEYS


def evaluate_folders(ref_dir: str | os.PathLike, pred_dir: str | os.PathLike,
                     output_json: str | os.PathLike | None = None, images_dir: str | os.PathLike | None = None,
                     challenge_2023: bool = False, num_processes: int = 2,
                     case_ids: Sequence[str] | None = None) -> dict:
    """Score every reference case (or ``case_ids``) against its prediction; return the summary dict.

    ref_dir, pred_dir: folders of masks matched by case id; images_dir: folder of the cases' ADC
    maps for brain volumes and volume bands (optional); challenge_2023: surface metrics with the
    2023 scorer's spacing order (the summary says so in ``note``); num_processes: worker
    processes (1 = in this process). With ``output_json`` the summary is written there and the
    per-case table beside it (:func:`per_case_csv_path`), both atomically; NaN is written as null.

    Summary keys: ``challenge_2023``, ``note``, ``num_cases``, ``metrics`` (per metric: mean, median,
    std, ci95_low, ci95_high, n, n_undefined), ``bands`` (per band: num_cases, case_ids, metrics;
    None without images), ``per_case`` (one row per case), the folders, the NSD tolerance, and
    ``provenance`` (versions, git commit, options: :func:`hiennu.provenance.provenance`).
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    images = Path(images_dir) if images_dir is not None else None
    _check_folders(ref_dir, pred_dir, images, output_json)
    jobs = _jobs(ref_dir, pred_dir, images, case_ids, challenge_2023)
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs))) as pool:
            rows = list(progress(pool.map(_score_case, jobs), total=len(jobs), desc="evaluating"))
    else:
        rows = [_score_case(job) for job in progress(jobs, desc="evaluating")]
    summary = {
        "challenge_2023": bool(challenge_2023),
        "note": CHALLENGE_2023_NOTE if challenge_2023 else CORRECT_SPACING_NOTE,
        "reference_dir": str(ref_dir), "prediction_dir": str(pred_dir),
        "images_dir": str(images) if images is not None else None,
        "nsd_tolerance_mm": NSD_TOLERANCE_MM,
        "num_cases": len(rows),
        "metrics": {m: summarize(r[m] for r in rows) for m in SUMMARY_METRICS},
        "bands": _band_results(rows) if images is not None else None,
        "bands_note": None if images is not None else NO_BANDS_NOTE,
        "per_case": rows,
        "provenance": provenance({"challenge_2023": bool(challenge_2023), "num_processes": num_processes,
                                  "case_ids": list(case_ids) if case_ids is not None else None}),
    }
    means = summary["metrics"]
    logger.info("%d cases: Dice %.4f, MASD %.3f mm, NSD %.4f%s", len(rows), means["dice"]["mean"],
                means["masd"]["mean"], means["nsd"]["mean"], " (challenge-2023 spacing order)" if challenge_2023 else "")
    if output_json is not None:
        write_per_case_csv(rows, per_case_csv_path(output_json))
        write_json(json_safe(summary), output_json)
    return summary
