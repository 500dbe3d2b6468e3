"""The one place where the library reports progress: a logger and a tqdm factory.

Library code calls :func:`get_logger` and :func:`progress`; it never prints. The command-line
tools call :func:`configure` once to choose verbosity.

Levels live on the handlers, not on the logger: the console handler shows INFO (verbose) or
WARNING (quiet), while a training's log file (:func:`attach_file_handler`) always receives INFO.
The ``hiennu`` logger itself passes INFO and above, so adding or removing a file handler never
changes what the console shows.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_LOGGER_NAME = "hiennu"
_show_progress = True


def get_logger(name: str | None = None) -> logging.Logger:
    """Return the package logger (or a child of it, e.g. ``get_logger(__name__)``)."""
    if name is None or name == _LOGGER_NAME:
        return logging.getLogger(_LOGGER_NAME)
    if not name.startswith(_LOGGER_NAME + "."):
        name = f"{_LOGGER_NAME}.{name}"
    return logging.getLogger(name)


class _ConsoleHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record arrives, so a replaced
    stderr (pytest's capture, a notebook, a redirect) is followed and a closed one never written to."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _console_handler(logger: logging.Logger) -> logging.Handler | None:
    return next((h for h in logger.handlers if getattr(h, "_hiennu", False)), None)


def configure(verbose: bool = True, show_progress: bool | None = None) -> None:
    """Send package log records to stderr (INFO if verbose, else WARNING) and toggle progress bars.

    ``show_progress`` None follows ``verbose``: a quiet run draws no progress bars either.
    """
    global _show_progress
    _show_progress = verbose if show_progress is None else show_progress
    logger = logging.getLogger(_LOGGER_NAME)
    handler = _console_handler(logger)
    if handler is None:
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._hiennu = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def progress_shown() -> bool:
    """Whether :func:`progress` draws bars in this process (what worker processes are told to follow)."""
    return _show_progress


def show_progress(on: bool) -> None:
    """Draw progress bars in this process or not (a worker process follows its command's ``-q`` with it)."""
    global _show_progress
    _show_progress = bool(on)


def is_verbose() -> bool:
    """Whether the console shows INFO lines (a :func:`configure` with ``verbose=True`` and no ``-q``)."""
    handler = _console_handler(logging.getLogger(_LOGGER_NAME))
    return handler is not None and handler.level <= logging.INFO


def attach_file_handler(path: str | os.PathLike, fmt: str = "%(asctime)s  %(message)s",
                        datefmt: str = "%Y-%m-%d %H:%M:%S") -> logging.Handler:
    """Append the package's INFO records to ``path`` until :func:`detach_handler`; the console is untouched.

    Without a prior :func:`configure` (library use) the console shows warnings only, as before.
    """
    logger = logging.getLogger(_LOGGER_NAME)
    if _console_handler(logger) is None:
        configure(verbose=False, show_progress=_show_progress)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def detach_handler(handler: logging.Handler) -> None:
    """Remove and close a handler added by :func:`attach_file_handler`."""
    logging.getLogger(_LOGGER_NAME).removeHandler(handler)
    handler.close()


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             leave: bool = False, disable: bool | None = None, **kwargs) -> tqdm:
    """A tqdm progress bar on stderr, disabled when progress is switched off."""
    if disable is None:
        disable = not _show_progress
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=disable,
                dynamic_ncols=True, file=sys.stderr, **kwargs)
