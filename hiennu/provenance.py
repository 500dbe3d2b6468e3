"""How a result was made: package versions, the git commit of a checkout, options and seed.

:func:`provenance` is recorded by every report hiennu writes (``debug.json`` of a training,
``summary.json`` of an evaluation, the loss study's ``report.md``), so a number can be traced back
to the code and settings that produced it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import hiennu

# distribution name -> module name, for the packages whose versions decide the numbers
PACKAGES = {"torch": "torch", "SimpleITK": "SimpleITK", "numpy": "numpy", "scipy": "scipy",
            "batchgenerators": "batchgenerators"}


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (None when it is not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        try:
            module = importlib.import_module(PACKAGES.get(distribution, distribution))
        except ImportError:
            return None
        return getattr(module, "__version__", None)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout hiennu is imported from (with ``+dirty`` for local edits), else None."""
    root = Path(hiennu.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def versions() -> dict[str, str | None]:
    """hiennu, python and the numerical packages' versions."""
    out: dict[str, str | None] = {"hiennu": hiennu.__version__, "python": platform.python_version()}
    out.update({name: package_version(name) for name in PACKAGES})
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def provenance(options: Any = None, seed: int | None = None) -> dict[str, Any]:
    """``{"hiennu_version", "git_commit", "versions", "options", "seed"}`` as plain JSON values.

    options: a dataclass or dict of the settings of the run (made JSON-safe).
    """
    return {"hiennu_version": hiennu.__version__, "git_commit": git_commit(), "versions": versions(),
            "options": _plain(options) if options is not None else None, "seed": seed}


def provenance_markdown(options: Any = None, seed: int | None = None) -> list[str]:
    """The same record as Markdown lines, for reports."""
    p = provenance(options, seed)
    lines = [f"- hiennu {p['hiennu_version']}" + (f", git commit `{p['git_commit']}`" if p["git_commit"] else ""),
             "- " + ", ".join(f"{k} {v}" for k, v in p["versions"].items() if k != "hiennu" and v is not None),
             f"- seed: {seed}" if seed is not None else "- seed: not applicable"]
    if p["options"]:
        lines.append("- options: " + ", ".join(f"`{k}={v}`" for k, v in p["options"].items()))
    return lines
