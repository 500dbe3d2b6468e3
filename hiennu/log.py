"""The one place where the library reports progress: a logger and a tqdm factory.

Library code calls :func:`get_logger` and :func:`progress`; it never prints. The command-line
tools call :func:`configure` once to choose verbosity.
"""

from __future__ import annotations

import logging
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


def configure(verbose: bool = True, show_progress: bool = True) -> None:
    """Send package log records to stderr (INFO if verbose, else WARNING) and toggle progress bars."""
    global _show_progress
    _show_progress = show_progress
    logger = logging.getLogger(_LOGGER_NAME)
    if not any(getattr(h, "_hiennu", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._hiennu = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             leave: bool = False, disable: bool | None = None, **kwargs) -> tqdm:
    """A tqdm progress bar on stderr, disabled when progress is switched off."""
    if disable is None:
        disable = not _show_progress
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=disable,
                dynamic_ncols=True, file=sys.stderr, **kwargs)
