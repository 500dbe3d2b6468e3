"""Building a raw dataset folder out of sight and moving it into place in one rename.

A dataset is written into a hidden temporary folder beside its final location; only when every
file is written is the folder renamed onto ``DatasetNNN_Name``. An interrupted run leaves no
half-written dataset (at most a hidden ``.DatasetNNN_Name.tmp-*`` folder, removed on failure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from hiennu.errors import HiennuError
from hiennu.io.atomic import staging_dir
from hiennu.io.folders import INSIDE, IS, folder_relation
from hiennu.log import get_logger
from hiennu.paths import parse_dataset_folder_name

log = get_logger(__name__)


#: what a raw dataset folder holds (nnU-Net's layout); anything else in it is the user's, and is never replaced
DATASET_ENTRIES = {"dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs"}


def check_target(target: Path, overwrite: bool, sources: tuple[Path, ...] = ()) -> None:
    """Refuse to replace an existing dataset (unless ``overwrite``) or to reuse its number under another name.

    Whatever ``overwrite`` says, only a dataset or an empty folder is ever replaced: a target that is a file, a
    folder without ``dataset.json``, a dataset folder that also holds other files (hidden ones such as ``.DS_Store``
    aside), or a folder that holds the current working folder is refused, so that ``--overwrite`` cannot delete what
    the user keeps there; nor one that holds a ``source`` the dataset is made from (it would be deleted with it).
    """
    for source in sources:
        if folder_relation(source, target) in (IS, INSIDE):
            raise HiennuError(f"{target}: holds {source}, which the dataset is made from, so it is not replaced; move "
                              f"the source out of it, or write the dataset under another id (-d)")
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise HiennuError(f"{target}: exists and is not a dataset folder (a file or a link); choose another "
                              f"output folder")
        if folder_relation(Path.cwd(), target) in (IS, INSIDE):
            raise HiennuError(f"{target}: holds the current working folder, so it cannot be replaced; run the "
                              f"command from outside it")
        empty = not any(target.iterdir())
        if not empty and not (target / "dataset.json").is_file():
            raise HiennuError(f"{target}: exists and is not a dataset (no dataset.json), so it is not replaced even "
                              f"with --overwrite; choose another output folder, or delete it yourself")
        others = sorted(p.name for p in target.iterdir()
                        if p.name not in DATASET_ENTRIES and not p.name.startswith("."))  # .DS_Store and the like
        if overwrite and others:
            raise HiennuError(f"{target}: the dataset folder also holds {', '.join(others[:5])}"
                              f"{' ...' if len(others) > 5 else ''}, which a dataset does not; move them out before "
                              f"replacing it with --overwrite")
        if not overwrite and not empty:
            raise HiennuError(f"{target}: dataset already exists; pass --overwrite (overwrite=True) to replace it, "
                              f"or choose another dataset id")
    parsed = parse_dataset_folder_name(target.name)
    if parsed is not None and target.parent.is_dir():
        clashes = [p.name for p in target.parent.iterdir() if p.is_dir() and p.name != target.name
                   and (parse_dataset_folder_name(p.name) or (None,))[0] == parsed[0]]
        if clashes:
            raise HiennuError(f"{target}: dataset id {parsed[0]:03d} is already used by {', '.join(sorted(clashes))} "
                              f"in {target.parent}; choose another id (-d) so the number stays unambiguous")


@contextlib.contextmanager
def staged_folder(target: str | Path, overwrite: bool = False, sources: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``target`` (see module docstring). ``sources``: the
    folders the dataset is made from, which ``target`` may not hold (:func:`check_target`)."""
    target = Path(os.path.abspath(target))  # "." and ".." by name, so the folder has a name to rename
    check_target(target, overwrite, tuple(Path(s) for s in sources))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(target.parent, prefix=f".{target.name}.tmp-")
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            try:
                target.rename(old / target.name)
            except OSError:
                old.rmdir()
                raise
        try:
            tmp.rename(target)
        except OSError:
            if old is not None:
                (old / target.name).rename(target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            log.info("replaced the existing dataset %s", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
