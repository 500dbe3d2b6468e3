"""File and folder names of the official BONBID-HIE release.

ADC: ``MGHNICU_010-VISIT_01-ADC_ss.mha``; ZADC:
``Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10.mha``; label: ``MGHNICU_010-VISIT_01_lesion.mha``.
The case id is the part they share (``MGHNICU_010-VISIT_01``). The release puts them in the folders
:data:`BONBID_ADC_DIR` (``1ADC_ss/``), :data:`BONBID_ZADC_DIR` (``2Z_ADC/``) and
:data:`BONBID_LABEL_DIR` (``3LABEL/``).
"""

from __future__ import annotations

import re
from pathlib import Path

from hiennu.io.image import strip_ending

BONBID_ADC_DIR, BONBID_ZADC_DIR, BONBID_LABEL_DIR = "1ADC_ss", "2Z_ADC", "3LABEL"

_ADC = re.compile(r"^(?P<case>.+)-ADC_ss$")
_ZADC = re.compile(r"^Zmap_(?P<case>.+?)-ADC.*$")
_LABEL = re.compile(r"^(?P<case>.+)_lesion$")


def bonbid_role(path: str | Path) -> tuple[str, str] | None:
    """``(role, case_id)`` of an official BONBID file name, role in {"ADC", "ZADC", "label"}; else None."""
    stem = strip_ending(path)
    for role, pattern in (("ZADC", _ZADC), ("ADC", _ADC), ("label", _LABEL)):
        m = pattern.match(stem)
        if m:
            return role, m.group("case")
    return None
