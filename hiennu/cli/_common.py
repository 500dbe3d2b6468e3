"""Shared plumbing of the console scripts: logging set-up and turning user errors into exit codes."""

from __future__ import annotations

import sys
from typing import Callable

from hiennu.errors import HiennuError
from hiennu.log import configure


def run(func: Callable[[], int | None], verbose: bool = True) -> int:
    """Call ``func``; print a :class:`HiennuError` as ``error: ...`` and return exit code 1."""
    configure(verbose=verbose)
    try:
        code = func()
    except HiennuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
