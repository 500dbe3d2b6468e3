"""Where an output folder lies against an input folder.

Every command that writes a folder of results from folders of inputs refuses an output folder that would let it
overwrite an input: one that is an input folder, lies inside one, or (for most commands) holds one. Hand-written
because pathlib compares path strings, while the question is about folders on disk: both sides are resolved
(links followed, ``..`` taken) before they are compared.
"""

from __future__ import annotations

import os
from pathlib import Path

from hiennu.errors import HiennuError

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


#: the folders of a raw dataset (beside its ``dataset.json``) that hold its images and labels
RAW_DATA_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


def raw_data_folder(path: str | os.PathLike) -> Path | None:
    """The images or labels folder of a raw dataset (:data:`RAW_DATA_FOLDERS`, beside a ``dataset.json``) that
    ``path`` is or lies in, on disk, or None. Outputs written there would replace a dataset's images or labels (a
    case's mask named like its label) or mix with them."""
    resolved = Path(path).resolve()
    return next((folder for folder in (resolved, *resolved.parents)
                 if folder.name in RAW_DATA_FOLDERS and (folder.parent / "dataset.json").is_file()), None)


def refuse_raw_data_output(option: str, path: str | os.PathLike) -> None:
    """Raise :class:`~hiennu.errors.HiennuError` (``"-o OUT lies in the raw dataset's labelsTr ...; choose ..."``) when
    the output ``path`` is or lies in :func:`raw_data_folder`. option: the command's flag for ``path``, e.g. ``"-o"``."""
    folder = raw_data_folder(path)
    if folder is not None:
        raise HiennuError(f"{option} {path} lies in {folder}, the {folder.name} folder of a raw dataset: its images or "
                          f"labels could be replaced; choose an output folder outside the raw dataset's "
                          f"{', '.join(RAW_DATA_FOLDERS)}")
