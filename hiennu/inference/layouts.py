"""Finding the cases of a prediction input folder, whatever layout the user has.

Supported layouts (detected per folder; one folder may mix the two flat ones):

- **nnU-Net**: ``CASE_0000.ext`` (channel 0, ADC) and ``CASE_0001.ext`` (channel 1, ZADC).
- **official BONBID names, flat**: ``MGHNICU_010-VISIT_01-ADC_ss.ext`` (ADC) and
  ``Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10.ext`` (ZADC) in one folder; label files
  (``..._lesion.ext``) are ignored.
- **official BONBID release folders**: the same names in ``1ADC_ss/`` and ``2Z_ADC/``
  (``3LABEL/`` is ignored).
- **challenge container**: ``images/skull-stripped-adc-brain-mri/*.mha`` (ADC) and
  ``images/z-score-adc/*.mha`` (ZADC) under the given folder (usually ``/input``). Files are
  paired by identical name; when each folder holds exactly one file, those two are a case.

Endings: ``.mha``, ``.nii.gz``, ``.nii``, ``.nrrd`` (and ``.mhd``). The output of a case keeps the
ending and geometry of its ADC file (channel 0 for a model without an ADC channel). Discovery only looks at names; :func:`read_case` reads the files
and checks that all channels lie on the same grid.

Channel order follows the model's ``dataset.json`` channel names: the BONBID and challenge
layouts put the ADC file at the index of the channel named ``ADC`` and the ZADC file at the index
of ``ZADC`` (case-insensitive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError, ImageReadError
from hiennu.io.bonbid_names import BONBID_ADC_DIR, BONBID_ZADC_DIR, bonbid_role
from hiennu.io.cases import parse_channel_file_name
from hiennu.io.channels import adc_zadc_channels, brain_channel
from hiennu.io.image import Geometry, image_ending, nonfinite_problem, read_image, strip_ending
from hiennu.log import get_logger

logger = get_logger(__name__)

CHALLENGE_ADC_DIR = Path("images") / "skull-stripped-adc-brain-mri"
CHALLENGE_ZADC_DIR = Path("images") / "z-score-adc"


class CaseInputError(HiennuError):
    """A case whose input files cannot be used (missing channel, unreadable file, grids differ)."""


@dataclass
class InputCase:
    """One case to predict.

    files: one path per model channel (None where the channel file is missing);
    layout: ``nnunet``, ``bonbid``, ``bonbid_folders`` or ``challenge``;
    problem: why the case cannot be predicted (None when it can, as far as names tell);
    reference: the channel whose file gives the outputs their geometry and ending: the ADC's when the model has
    an ADC channel, whatever its position (:func:`hiennu.io.channels.brain_channel`), else channel 0.
    """

    case_id: str
    files: list[Path | None]
    layout: str
    problem: str | None = None
    extra_files: list[Path] = field(default_factory=list)
    reference: int = 0

    @property
    def output_ending(self) -> str:
        present = [f for f in self.files if f is not None]
        chosen = self.files[self.reference] if self.reference < len(self.files) else None
        chosen = chosen if chosen is not None else (present[0] if present else None)
        ending = image_ending(chosen) if chosen is not None else None
        return ".mha" if ending in (None, ".mhd") else ending

    def output_name(self) -> str:
        """``CASE.ext``: the mask's file name, with the ending of the case's reference (ADC) file."""
        return f"{self.case_id}{self.output_ending}"


def _role_indices(channel_names: Sequence[str]) -> tuple[int, int]:
    adc, zadc = adc_zadc_channels(channel_names)
    if adc is not None and zadc is not None:
        return adc, zadc
    raise HiennuError(f"the model's channels are {list(channel_names)}, but BONBID-named and challenge inputs "
                      f"hold an ADC and a ZADC map; rename the inputs CASE_0000, CASE_0001 ... in the model's "
                      f"channel order instead")


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and image_ending(p) is not None]


def _finish(case_id: str, per_channel: dict[int, list[Path]], num_channels: int, layout: str,
            channel_names: Sequence[str]) -> InputCase:
    files: list[Path | None] = []
    problems = []
    for c in range(num_channels):
        found = per_channel.get(c, [])
        if len(found) > 1:
            problems.append(f"channel {c} ({channel_names[c]}) has {len(found)} files: "
                            f"{', '.join(p.name for p in found)}; keep one")
        files.append(found[0] if found else None)
    missing = [c for c, f in enumerate(files) if f is None]
    if missing:
        have = ", ".join(str(f) for f in files if f is not None) or "nothing"
        problems.append("missing channel(s) " + ", ".join(f"{c} ({channel_names[c]})" for c in missing)
                        + f"; found {have}")
    extra = sorted(p for c, ps in per_channel.items() if c >= num_channels for p in ps)
    if extra:
        problems.append(f"the model takes {num_channels} channel(s), but there are also "
                        f"{', '.join(p.name for p in extra)}")
    return InputCase(case_id, files, layout, "; ".join(problems) or None, extra, brain_channel(channel_names))


def _flat_cases(folder: Path, num_channels: int, channel_names: Sequence[str]) -> list[InputCase]:
    nnunet: dict[str, dict[int, list[Path]]] = {}
    bonbid: dict[str, dict[int, list[Path]]] = {}
    ignored = []
    for p in _image_files(folder):
        parsed = parse_channel_file_name(p)
        if parsed:
            nnunet.setdefault(parsed[0], {}).setdefault(parsed[1], []).append(p)
            continue
        role = bonbid_role(p)
        if role and role[0] in ("ADC", "ZADC"):
            adc, zadc = _role_indices(channel_names)
            bonbid.setdefault(role[1], {}).setdefault(adc if role[0] == "ADC" else zadc, []).append(p)
        elif not role:
            ignored.append(p.name)
    if ignored:
        logger.warning("%s: ignored %d file(s) that follow no input naming (CASE_0000.ext or the BONBID names): %s",
                       folder, len(ignored), ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))
    cases = [_finish(c, ch, num_channels, "nnunet", channel_names) for c, ch in nnunet.items()]
    cases += [_finish(c, ch, num_channels, "bonbid", channel_names) for c, ch in bonbid.items()]
    return cases


def _bonbid_folder_cases(folder: Path, num_channels: int, channel_names: Sequence[str]) -> list[InputCase]:
    adc, zadc = _role_indices(channel_names)
    per_case: dict[str, dict[int, list[Path]]] = {}
    for sub, role, index in ((BONBID_ADC_DIR, "ADC", adc), (BONBID_ZADC_DIR, "ZADC", zadc)):
        for p in _image_files(folder / sub):
            r = bonbid_role(p)
            if r is None or r[0] != role:
                logger.warning("%s: not a BONBID %s file name; ignored", p, role)
                continue
            per_case.setdefault(r[1], {}).setdefault(index, []).append(p)
    return [_finish(c, ch, num_channels, "bonbid_folders", channel_names) for c, ch in per_case.items()]


def _challenge_cases(folder: Path, num_channels: int, channel_names: Sequence[str]) -> list[InputCase]:
    adc, zadc = _role_indices(channel_names)
    adc_files = _image_files(folder / CHALLENGE_ADC_DIR)
    zadc_files = _image_files(folder / CHALLENGE_ZADC_DIR)
    if len(adc_files) == 1 and len(zadc_files) == 1:
        return [_finish(strip_ending(adc_files[0]), {adc: adc_files, zadc: zadc_files}, num_channels,
                        "challenge", channel_names)]
    per_case: dict[str, dict[int, list[Path]]] = {}
    for files, index in ((adc_files, adc), (zadc_files, zadc)):
        for p in files:
            per_case.setdefault(strip_ending(p), {}).setdefault(index, []).append(p)
    return [_finish(c, ch, num_channels, "challenge", channel_names) for c, ch in per_case.items()]


def discover_input_cases(in_dir: str | Path, channel_names: Sequence[str] = ("ADC", "ZADC")) -> list[InputCase]:
    """Every case under ``in_dir`` in any supported layout, sorted by case id.

    Cases with a missing, duplicated or surplus channel are returned with ``problem`` set (the
    caller reports and skips them). Raises :class:`HiennuError` when the folder does not exist or
    holds no recognizable input at all.
    """
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise HiennuError(f"input folder {in_dir} does not exist (or is not a folder)")
    n = len(channel_names)
    cases = _flat_cases(in_dir, n, channel_names)
    if (in_dir / BONBID_ADC_DIR).is_dir() or (in_dir / BONBID_ZADC_DIR).is_dir():
        cases += _bonbid_folder_cases(in_dir, n, channel_names)
    if (in_dir / CHALLENGE_ADC_DIR).is_dir() or (in_dir / CHALLENGE_ZADC_DIR).is_dir():
        cases += _challenge_cases(in_dir, n, channel_names)
    seen: dict[str, InputCase] = {}
    for case in cases:
        if case.case_id in seen:
            other = seen[case.case_id]
            other.problem = (f"case id {case.case_id!r} occurs in two layouts ({other.layout}: "
                             f"{', '.join(str(f) for f in other.files if f)}; {case.layout}: "
                             f"{', '.join(str(f) for f in case.files if f)}); keep one copy")
            continue
        seen[case.case_id] = case
    if not seen:
        raise HiennuError(
            f"no input cases found in {in_dir}. Expected CASE_0000.mha + CASE_0001.mha (nnU-Net), the official "
            f"BONBID names (*-ADC_ss.mha + Zmap_*.mha, flat or in {BONBID_ADC_DIR}/ + {BONBID_ZADC_DIR}/), or the "
            f"challenge layout ({CHALLENGE_ADC_DIR}/ + {CHALLENGE_ZADC_DIR}/); endings .mha, .nii.gz, .nii, .nrrd")
    return [seen[k] for k in sorted(seen)]


def read_case(case: InputCase) -> tuple[list[np.ndarray], Geometry]:
    """Read every channel of ``case`` as float32 ``(z, y, x)``; returns ``(images, geometry of the reference)``.

    Raises :class:`CaseInputError` naming the case and file when a channel is missing or
    unreadable, holds NaN or infinite voxels, when the reference (brain) channel is all zero (no brain: training's
    integrity check refuses it too), or when the channels lie on different grids
    (:func:`hiennu.io.image.grid_differences`; within its tolerance the reference channel's geometry is
    returned, so outputs take the ADC's geometry exactly, whatever the model's channel order).
    """
    if case.problem:
        raise CaseInputError(f"case {case.case_id}: {case.problem}")
    images, geometries = [], []
    for path in case.files:
        try:
            array, geometry = read_image(path)
        except ImageReadError as e:
            raise CaseInputError(f"case {case.case_id}: {e}") from None
        problem = nonfinite_problem(array)
        if problem:
            raise CaseInputError(f"case {case.case_id}: {path} has {problem}; replace them (e.g. by 0 outside the "
                                 f"brain) before predicting")
        images.append(array)
        geometries.append(geometry)
    ref = case.reference
    if not np.any(images[ref]):
        raise CaseInputError(f"case {case.case_id}: {case.files[ref]} is all zero, so the case has no brain to segment "
                             f"(the brain is where this channel is non-zero); check that the right map was exported")
    for c in range(len(geometries)):
        diffs = geometries[ref].differences(geometries[c]) if c != ref else []
        if diffs:
            raise CaseInputError(
                f"case {case.case_id}: {case.files[c].name} lies on a different grid than {case.files[ref].name} "
                f"({'; '.join(diffs)}); resample it onto {case.files[ref].name}'s grid")
    return images, geometries[ref]
