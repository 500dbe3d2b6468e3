"""A lock on a fold folder, so two training runs of one fold never write into it at once.

The lock is the file ``fold_K/training.lock``, created atomically (``O_CREAT | O_EXCL``) and holding
JSON: ``pid``, ``hostname``, ``started`` (local time, ``%Y-%m-%d %H:%M:%S``) and, on Linux,
``process_start`` (the holder's start time in clock ticks since boot, from ``/proc/PID/stat``,
so a recycled pid is not mistaken for the holder).

A second run finds the file and refuses, naming the holder. A lock is *stale* when its holder ran
on this host and that process is gone (killed, crashed, machine rebooted): it is then replaced
with a warning, so a killed run never blocks the fold forever. A lock taken on another host
cannot be checked from here; the message says to delete the file once that run is known to be gone.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from hiennu.errors import HiennuError
from hiennu.log import get_logger
from hiennu.parallel import process_alive

log = get_logger(__name__)

LOCK_NAME = "training.lock"


class FoldLockedError(HiennuError):
    """Another live run holds the fold's lock."""


def _process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def holder_is_alive(holder: dict) -> bool | None:
    """True/False for a holder on this host (pid alive and, where known, the same process); None on another host."""
    if holder.get("hostname") != platform.node():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not process_alive(pid):
        return False
    recorded = holder.get("process_start")
    current = _process_start(pid)
    return recorded is None or current is None or recorded == current


def describe_holder(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('hostname', '?')}, "
            f"started {holder.get('started', '?')}")


class FoldLock:
    """Context manager holding ``folder/training.lock`` for the duration of a training run."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        """Take the lock, replacing a stale one; raise :class:`FoldLockedError` naming a live holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "hostname": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "process_start": _process_start(os.getpid())}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            return
        raise FoldLockedError(f"{self.path}: could not take the training lock of {self.folder} (another run keeps "
                              f"taking it); try again")

    def _handle_existing(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            if not isinstance(holder, dict):
                raise ValueError
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError):
            # unreadable: a run killed while writing it, or one writing it right now
            if time.time() - self._mtime() < 5:
                time.sleep(0.5)
                return
            holder = {}
        alive = holder_is_alive(holder) if holder else False
        if alive is False:
            log.warning("removing the stale training lock %s (%s is no longer running)", self.path,
                        describe_holder(holder) if holder else "unreadable record")
            stale = self.path.with_name(f".{LOCK_NAME}.stale-{os.getpid()}")
            try:
                os.replace(self.path, stale)
                stale.unlink()
            except FileNotFoundError:
                pass
            return
        if alive is None:
            raise FoldLockedError(
                f"{self.folder} is being trained by another run ({describe_holder(holder)}), which cannot be checked "
                f"from host {platform.node()}; wait for it to finish, or, if that run is gone, delete {self.path}")
        raise FoldLockedError(
            f"{self.folder} is being trained by another run ({describe_holder(holder)}); wait for it to finish or "
            f"stop it, then resume with --continue")

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if not self.held:
            return
        self.held = False
        try:
            holder = json.loads(self.path.read_text())
            if holder.get("pid") == os.getpid() and holder.get("hostname") == platform.node():
                self.path.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    def __enter__(self) -> "FoldLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
