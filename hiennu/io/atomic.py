"""Atomic writes: write under a temporary name in the same folder, then rename.

A reader never sees a half-written file, and an interrupted write leaves the old file (if any)
untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hiennu.errors import HiennuError, WriteError
from hiennu.log import get_logger
from hiennu.parallel import process_alive

log = get_logger(__name__)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
_UMASK = _current_umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


def _owner_tag() -> str:
    """``<pid>h<host>-``: which process of which host made a staging folder (the host as 6 hex digits of a hash
    of its name, short so that the folder name stays well under the 255 bytes a name may have)."""
    return f"{os.getpid()}h{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF:06x}-"


def remove_abandoned_staging(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the folders :func:`staging_dir` made in ``parent`` with ``prefix`` whose process has ended (killed
    with SIGKILL or by a power loss before it could clean up); return them.

    Why: such a folder holds a half-written copy of what it was to become (a converted dataset, an unpacked model)
    and is hidden, so a user would not find it. Only folders of this host are removed, and only when their process
    no longer runs, so a concurrent run's staging, or one made on another machine sharing the disk, stays; a
    folder of another name (an older hiennu's, a moved-aside original) is never touched."""
    parent = Path(parent)
    host = _owner_tag().split("h", 1)[1]
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        owner = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
        pid, _, rest = owner.partition("h")
        if not (pid.isdigit() and rest.startswith(host) and entry.is_dir() and not entry.is_symlink()):
            continue
        if not process_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def staging_dir(parent: str | os.PathLike, prefix: str, suffix: str = "", holds_original: bool = False) -> Path:
    """A new empty folder in ``parent`` with a unique hidden name, to be filled and then renamed into place: the
    name is ``prefix``, the process id and host and random characters. Before making it, the folders of ``prefix``
    that a killed process left are removed (:func:`remove_abandoned_staging`), unless ``holds_original``: a folder
    that an original is moved aside into while its replacement is renamed in may hold the only copy of it when the
    process was killed between the two renames, so those are never removed unasked.
    Why not bare :func:`tempfile.mkdtemp`: it creates the folder 0700, so a folder renamed into place from it (an
    installed model, a converted dataset) would be readable by its writer alone; this one gets the mode a plain
    ``mkdir`` would give it under the current umask."""
    for folder in ([] if holds_original else remove_abandoned_staging(parent, prefix)):
        log.info("removed %s, left half-written by a process that no longer runs", folder)
    path = Path(tempfile.mkdtemp(prefix=prefix + _owner_tag(), suffix=suffix, dir=parent))
    os.chmod(path, _DIR_MODE)
    return path


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block ends, then deliver the first one received.

    For a few renames that must not be split (a model folder swapped in, its old copy set aside and renamed for
    removal): an interrupt landing between two of them would leave a state that no later run can tell from another
    (an old model under a hidden name, kept forever because it may be the only copy). The handlers in place are
    restored on the way out and the signal is raised again, so the command ends as it would have, after the block.
    Signals that are ignored stay ignored; outside the main thread (where Python cannot set handlers) nothing is
    held. SIGKILL cannot be held: the rename sequence is still written so that it loses nothing then."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is signal.SIG_IGN or handler is None:  # None: set from C, cannot be restored from Python
            continue
        previous[signum] = signal.signal(signum, lambda number, _frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot be written ({e.strerror or e}); choose a folder you can write to, and run "
                          f"the command again") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, _FILE_MODE)  # mkstemp creates 0600; give the file the usual permissions
            os.replace(tmp_path, path)
        except OSError as e:
            named = {os.fspath(name) for name in (e.filename, e.filename2) if name is not None}
            if named - {tmp, str(path)}:  # about another file (one being read): its own message says it best
                raise
            raise WriteError(f"{path}: cannot be written ({e.strerror or e}); free some space or choose a "
                              f"folder you can write to, and run the command again") from None
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
