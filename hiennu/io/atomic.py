"""Atomic writes: write under a temporary name in the same folder, then rename.

A reader never sees a half-written file, and an interrupted write leaves the old file (if any)
untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hiennu.errors import HiennuError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
_UMASK = _current_umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


def staging_dir(parent: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """A new empty folder in ``parent`` with a unique hidden name, to be filled and then renamed into place.
    Why not bare :func:`tempfile.mkdtemp`: it creates the folder 0700, so a folder renamed into place from it (an
    installed model, a converted dataset) would be readable by its writer alone; this one gets the mode a plain
    ``mkdir`` would give it under the current umask."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(path, _DIR_MODE)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    ``suffix`` is the ending the temporary file must keep (for writers that pick the format from
    the ending, e.g. ``".nii.gz"``); it defaults to the ending of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (keys kept in insertion order)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, default=_json_default)
            f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def read_json_file(path: str | os.PathLike, missing: str, invalid: str) -> Any:
    """Read a JSON file a user may have edited; a missing or malformed file is a :class:`HiennuError`.

    ``missing`` / ``invalid`` say how to fix each case (e.g. "run hiennu_plan_and_preprocess first").
    """
    path = Path(path)
    if not path.is_file():
        raise HiennuError(f"{path}: not found; {missing}")
    try:
        return read_json(path)
    except ValueError as e:
        raise HiennuError(f"{path}: not valid JSON ({e}); {invalid}") from None


def write_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write one array as ``.npy`` atomically (memory-mappable with ``np.load(mmap_mode='r')``)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")
