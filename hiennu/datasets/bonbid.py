"""Converting the official BONBID-HIE release layout into a hiennu raw dataset.

Source layout (any split of the release)::

    SRC/1ADC_ss/MGHNICU_010-VISIT_01-ADC_ss.mha
    SRC/2Z_ADC/Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10.mha
    SRC/3LABEL/MGHNICU_010-VISIT_01_lesion.mha          (absent in the validation/test splits)

Files are recognised by their official names (:func:`hiennu.io.bonbid_names.bonbid_role`), wherever
they sit below ``SRC``. Result: ``$hiennu_raw/DatasetNNN_BONBID/`` with ``dataset.json``,
``imagesTr/CASE_0000.mha`` (ADC), ``imagesTr/CASE_0001.mha`` (ZADC), ``labelsTr/CASE.mha`` (uint8
{0, 1}); cases without a label go to ``imagesTs/``. Voxel values, pixel types of the images and the
geometry (size, spacing, origin, direction) of the ADC map are kept exactly; labels become uint8.
ZADC map and label must lie on the ADC's grid within :func:`hiennu.io.image.grid_differences`'s
tolerance (the release's MGHNICU_336 is off by about 0.001 mm) and are written with the ADC's
geometry, so every file of a converted case shares one grid exactly.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiennu.datasets.staging import staged_folder
from hiennu.errors import HiennuError
from hiennu.io.bonbid_names import BONBID_ADC_DIR, BONBID_LABEL_DIR, BONBID_ZADC_DIR, bonbid_role
from hiennu.io.cases import channel_file_name
from hiennu.io.dataset_json import BONBID_CHANNELS, BONBID_LABELS, DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, image_ending, nonfinite_problem, read_image, write_image
from hiennu.log import get_logger, progress
from hiennu.paths import check_dataset_id_free, dataset_folder_name, preprocessed_root, results_root
from hiennu.paths import raw_root as default_raw_root

log = get_logger(__name__)

BONBID_REFERENCE = (
    "R. Bao et al., 'BOston Neonatal Brain Injury Dataset for Hypoxic Ischemic Encephalopathy (BONBID-HIE): "
    "Part I. MRI and Manual Lesion Annotation', bioRxiv 2023, doi:10.1101/2023.06.30.546841; "
    "data: Zenodo record 8104103, doi:10.5281/zenodo.8104103")
BONBID_LICENCE = (
    "CC BY-NC-ND 4.0 (https://creativecommons.org/licenses/by-nc-nd/4.0/): academic, non-commercial use "
    "with credit to the BONBID-HIE authors; do not redistribute modified images.")


@dataclass
class BonbidCase:
    """The source files of one BONBID case; ``label`` is None in unlabelled splits."""

    case_id: str
    adc: Path | None = None
    zadc: Path | None = None
    label: Path | None = None


def find_bonbid_cases(src: str | Path) -> list[BonbidCase]:
    """All cases below ``src``, recognised by their official file names, sorted by case id.

    Raises :class:`HiennuError` when ``src`` holds no BONBID files, when one role of a case appears
    twice, or when a case lacks its ADC or ZADC map.
    """
    src = Path(src)
    release_dirs = (BONBID_ADC_DIR, BONBID_ZADC_DIR, BONBID_LABEL_DIR)
    if src.is_file():
        holder = src.parent.parent if src.parent.name in release_dirs else src.parent
        raise HiennuError(f"{src}: is a file; give the folder holding {BONBID_ADC_DIR}/, {BONBID_ZADC_DIR}/ (and "
                          f"{BONBID_LABEL_DIR}/), e.g. {holder}")
    if not src.is_dir():
        raise HiennuError(f"{src}: source folder not found; give the folder holding {BONBID_ADC_DIR}/, "
                          f"{BONBID_ZADC_DIR}/ (and {BONBID_LABEL_DIR}/)")
    cases: dict[str, BonbidCase] = {}
    ignored: list[Path] = []
    attr = {"ADC": "adc", "ZADC": "zadc", "label": "label"}
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or image_ending(path) is None:
            continue
        role = bonbid_role(path)
        if role is None:  # said, as hiennu_predict says it: a case whose files are all misnamed is not lost silently
            ignored.append(path)
            continue
        kind, case_id = role
        case = cases.setdefault(case_id, BonbidCase(case_id))
        previous = getattr(case, attr[kind])
        if previous is not None:
            raise HiennuError(f"case {case_id}: two {kind} files, {previous} and {path}; keep one of them")
        setattr(case, attr[kind], path)
    if ignored:
        log.warning("%d image file(s) below %s have no BONBID file name (ADC, ZADC or label of a case) and are left "
                    "out: %s%s", len(ignored), src, ", ".join(str(p) for p in ignored[:5]),
                    " ..." if len(ignored) > 5 else "")
    if not cases:
        raise HiennuError(f"{src}: no BONBID files found (expected names like "
                          f"{BONBID_ADC_DIR}/MGHNICU_010-VISIT_01-ADC_ss.mha, "
                          f"{BONBID_ZADC_DIR}/Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10.mha, "
                          f"{BONBID_LABEL_DIR}/MGHNICU_010-VISIT_01_lesion.mha)")
    problems = []
    for case in cases.values():
        for kind, folder in (("adc", BONBID_ADC_DIR), ("zadc", BONBID_ZADC_DIR)):
            if getattr(case, kind) is None:
                other = case.adc or case.zadc or case.label
                problems.append(f"case {case.case_id}: no {kind.upper()} map in {folder}/ (found {other})")
    if problems:
        parts = {p.parent.name for c in cases.values() for p in (c.adc, c.zadc, c.label) if p is not None}
        if src.name in release_dirs and len(parts) == 1:
            raise HiennuError(f"{src}: is the release's {src.name}/ alone; give its parent {src.parent}, which holds "
                              f"{BONBID_ADC_DIR}/, {BONBID_ZADC_DIR}/ (and {BONBID_LABEL_DIR}/)")
        raise HiennuError("incomplete BONBID cases:\n  " + "\n  ".join(problems))
    return [cases[k] for k in sorted(cases)]


def binarize_label(array: np.ndarray, path: Path, mapping: dict[float, int] | None = None) -> np.ndarray:
    """The label as uint8 {0, 1}.

    Without ``mapping`` every voxel must be 0 or 1 (float 0.0/1.0 allowed). With ``mapping``
    (source value -> 0 or 1) every value present must be a key. Otherwise raises naming ``path``.
    """
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise HiennuError(f"{path}: the label has {nonfinite_problem(array)}, which no label mapping can name; the file "
                          f"is damaged: fix or re-export it")
    values = np.unique(array)
    example = _example_mapping(values)
    if mapping is None:
        bad = [v for v in values if v not in (0, 1)]
        if bad:
            raise HiennuError(f"{path}: label values must be 0 and 1, found {_fmt_values(bad)} (values present: "
                              f"{_fmt_values(values)}); pass a mapping that gives every value present a target 0 or "
                              f"1, e.g. --label-map {example}")
        return (array == 1).astype(np.uint8)
    unmapped = [v for v in values if float(v) not in mapping]
    if unmapped:
        raise HiennuError(f"{path}: label values {_fmt_values(unmapped)} are not in the label mapping "
                          f"{mapping}; every value present ({_fmt_values(values)}) needs a target 0 or 1, e.g. "
                          f"--label-map {example}")
    targets = set(mapping.values())
    if not targets <= {0, 1}:
        raise HiennuError(f"label mapping {mapping}: targets must be 0 or 1")
    out = np.zeros(array.shape, dtype=np.uint8)
    for value in values:
        if mapping[float(value)] == 1:
            out[array == value] = 1
    return out


def _example_mapping(values) -> str:
    """``--label-map`` items for every value present (0 to background, the rest to lesion), written so that the
    command converts when pasted: each value exactly as it is read back (``repr`` of a fraction, ``:g`` cut it to six
    digits), a negative one as ``' -1:1'`` (the leading space keeps argparse from reading it as an option)."""
    items = []
    for v in values:
        x = float(v)
        source = f"{x:g}" if x.is_integer() else repr(x)
        item = f"{source}:{0 if x == 0 else 1}"
        items.append(shlex.quote(" " + item) if x < 0 else item)
    return " ".join(items)


def _fmt_values(values) -> str:
    shown = ", ".join(f"{float(v):g}" for v in list(values)[:10])
    return shown + (f" ... ({len(values)} distinct)" if len(values) > 10 else "")


def _convert_case(case: BonbidCase, out: Path, label_mapping: dict[float, int] | None) -> None:
    images_dir = out / ("imagesTr" if case.label is not None else "imagesTs")
    adc, adc_geo = read_image(case.adc, dtype=None)
    zadc, zadc_geo = read_image(case.zadc, dtype=None)
    _same_grid(case, adc_geo, zadc_geo, case.zadc)
    for path, image in ((case.adc, adc), (case.zadc, zadc)):  # refused here, naming the release's file, not later
        problem = nonfinite_problem(image)
        if problem is None and image is adc and not np.any(image):  # a ZADC map may be zero anywhere; an ADC map not
            problem = "only zero voxels (no brain)"
        if problem:
            raise HiennuError(f"case {case.case_id}: {path} has {problem}; fix or re-export it, or drop this case")
    if case.label is not None:
        label, label_geo = read_image(case.label, dtype=None)
        _same_grid(case, adc_geo, label_geo, case.label)
        write_image(binarize_label(label, case.label, label_mapping), label_geo.on_grid_of(adc_geo),
                    out / "labelsTr" / f"{case.case_id}.mha")
    write_image(adc, adc_geo, images_dir / channel_file_name(case.case_id, 0, ".mha"))
    write_image(zadc, zadc_geo.on_grid_of(adc_geo), images_dir / channel_file_name(case.case_id, 1, ".mha"))


def _same_grid(case: BonbidCase, ref: Geometry, other: Geometry, path: Path) -> None:
    diffs = ref.differences(other)
    if diffs:
        raise HiennuError(f"case {case.case_id}: {path} is not on the grid of its ADC map {case.adc} "
                          f"({'; '.join(diffs)}); fix or drop this case")


def convert_bonbid(src: str | Path, dataset_id: int, name: str = "BONBID", raw_root: str | Path | None = None,
                   overwrite: bool = False, label_mapping: dict[float, int] | None = None,
                   allow_unlabeled: bool | None = None) -> Path:
    """Convert the official BONBID layout at ``src`` into ``raw_root/DatasetNNN_name``; returns that folder.

    label_mapping: source label value -> 0/1, for label files with values other than {0, 1}.
    allow_unlabeled: cases without a label go to ``imagesTs/``. By default this is allowed only when
        the source holds no labels at all (a validation or test split); in a labelled split a missing
        label is an error unless this is True.
    Nothing is written unless every case converts; an existing dataset is replaced only with ``overwrite``.
    """
    cases = find_bonbid_cases(src)
    labelled = [c for c in cases if c.label is not None]
    unlabelled = [c for c in cases if c.label is None]
    if labelled and unlabelled and not allow_unlabeled:
        listed = ", ".join(c.case_id for c in unlabelled[:5]) + (" ..." if len(unlabelled) > 5 else "")
        raise HiennuError(f"{src}: {len(unlabelled)} case(s) have no label file in {BONBID_LABEL_DIR}/ ({listed}) while "
                          f"{len(labelled)} have one; add the missing *_lesion.mha files, or pass "
                          f"--allow-unlabeled to put those cases in imagesTs/")
    root = Path(raw_root) if raw_root is not None else default_raw_root()
    target = root / dataset_folder_name(dataset_id, name)
    check_dataset_id_free(target.name, [preprocessed_root(), results_root()], target)  # the raw root: check_target
    with staged_folder(target, overwrite=overwrite, sources=(Path(src),)) as out:
        (out / "imagesTr").mkdir()
        (out / "labelsTr").mkdir()
        if unlabelled:
            (out / "imagesTs").mkdir()
        for case in progress(cases, desc="converting BONBID cases"):
            _convert_case(case, out, label_mapping)
        dj = DatasetJson(
            name=name, channel_names=list(BONBID_CHANNELS), labels=dict(BONBID_LABELS),
            num_training=len(labelled), file_ending=".mha",
            description=f"BONBID-HIE converted by hiennu_convert_bonbid from {Path(src).name}: "
                        f"{len(labelled)} labelled case(s) in imagesTr, {len(unlabelled)} unlabelled in imagesTs. "
                        f"ADC in 10^-6 mm^2/s (skull-stripped, background 0); ZADC is a z-score against a "
                        f"normative atlas clipped to [-10, 10].",
            reference=BONBID_REFERENCE, licence=BONBID_LICENCE)
        save_dataset_json(dj, out / "dataset.json")
    log.info("wrote %s: %d training case(s), %d test case(s)", target, len(labelled), len(unlabelled))
    return target
