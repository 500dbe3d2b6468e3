"""The console scripts that setup.py declares (read from its text, without running setup)."""

from __future__ import annotations

import ast
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def console_modules() -> set[str]:
    """Module names under ``hiennu.cli`` of every ``hiennu_*`` console script."""
    tree = ast.parse(SETUP.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SCRIPTS" for t in node.targets):
            return set(ast.literal_eval(node.value).values())
    raise AssertionError("setup.py declares no SCRIPTS")
