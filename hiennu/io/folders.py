"""Where an output folder lies against an input folder.

Every command that writes a folder of results from folders of inputs refuses an output folder that would let it
overwrite an input: one that is an input folder, lies inside one, or (for most commands) holds one. Hand-written
because pathlib compares path strings, while the question is about folders on disk: both sides are resolved
(links followed, ``..`` taken) before they are compared.
"""

from __future__ import annotations

import os
from pathlib import Path

IS, INSIDE, AROUND = "is", "inside", "around"


def folder_relation(out_dir: str | os.PathLike, in_dir: str | os.PathLike) -> str | None:
    """:data:`IS` (the same folder), :data:`INSIDE` (``out_dir`` lies inside ``in_dir``), :data:`AROUND`
    (``out_dir`` holds ``in_dir``) or None (apart), for the folders on disk."""
    out, src = Path(out_dir).resolve(), Path(in_dir).resolve()
    if out == src:
        return IS
    if out.is_relative_to(src):
        return INSIDE
    if src.is_relative_to(out):
        return AROUND
    return None
