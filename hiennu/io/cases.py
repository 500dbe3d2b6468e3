"""The nnU-Net file layout of a raw dataset: channel file names, and finding the cases.

``imagesTr/CASE_0000.mha`` (channel 0), ``imagesTr/CASE_0001.mha`` (channel 1) ...,
``labelsTr/CASE.mha``. :func:`channel_file_name` and :func:`parse_channel_file_name` are the one
definition of the channel file naming (the converters, the integrity check, prediction input
layouts and evaluation all use them). Discovery never raises for missing files: it records what it
found, and the integrity check turns gaps into named errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hiennu.io.image import image_ending, strip_ending

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_file_name(case_id: str, channel: int, ending: str = "") -> str:
    """``CASE_XXXX`` + ``ending``: the file of channel ``channel`` of a case (``ending`` e.g. ``".mha"``)."""
    return f"{case_id}_{int(channel):04d}{ending}"


def parse_channel_file_name(path: str | Path) -> tuple[str, int] | None:
    """``(case id, channel)`` of a channel file (``CASE_0001.mha``, or its stem ``CASE_0001``); else None."""
    m = _CHANNEL_RE.match(strip_ending(path))
    return (m.group("case"), int(m.group("channel"))) if m else None


@dataclass
class CaseFiles:
    """The files of one case. ``image_files[c]`` is None when channel ``c`` is missing."""

    case_id: str
    image_files: list[Path | None] = field(default_factory=list)
    label_file: Path | None = None

    @property
    def missing_channels(self) -> list[int]:
        return [c for c, f in enumerate(self.image_files) if f is None]


def discover_cases(images_dir: str | Path, num_channels: int, labels_dir: str | Path | None = None,
                   file_ending: str | None = None) -> list[CaseFiles]:
    """Cases found in ``images_dir`` (and their labels in ``labels_dir``), sorted by case id.

    A case is any ``CASE_XXXX`` image file; a label whose case has no image file still yields a
    case (with every channel missing) so the gap can be reported. ``file_ending`` restricts the
    files considered (default: every supported ending).
    """
    images_dir = Path(images_dir)
    found: dict[str, dict[int, Path]] = {}
    if images_dir.is_dir():
        for p in sorted(images_dir.iterdir()):
            ending = image_ending(p)
            if ending is None or (file_ending and ending != file_ending) or p.name.startswith("."):
                continue
            parsed = parse_channel_file_name(p)
            if parsed:
                found.setdefault(parsed[0], {})[parsed[1]] = p
    labels: dict[str, Path] = {}
    if labels_dir is not None and Path(labels_dir).is_dir():
        for p in sorted(Path(labels_dir).iterdir()):
            ending = image_ending(p)
            if ending is None or (file_ending and ending != file_ending) or p.name.startswith("."):
                continue
            labels[strip_ending(p)] = p
    cases = []
    for case_id in sorted(set(found) | set(labels)):
        channels = found.get(case_id, {})
        cases.append(CaseFiles(case_id, [channels.get(c) for c in range(num_channels)], labels.get(case_id)))
    return cases
