"""Every ``python`` snippet of documentation/other_frameworks.md runs; the nnU-Net and MONAI ones need
their packages and skip without them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "documentation" / "other_frameworks.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
NEEDS = {"nnunetv2": "nnunetv2", "monai": "monai"}


def needed_package(code: str) -> str | None:
    for name, module in NEEDS.items():
        if re.search(rf"^\s*(from|import) {name}\b", code, flags=re.M):
            return module
    return None


def test_the_page_has_the_three_snippets():
    assert [needed_package(b) for b in BLOCKS] == [None, "nnunetv2", "monai"]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: needed_package(BLOCKS[i]) or "plain-torch")
def test_snippet_runs(index):
    code = BLOCKS[index]
    package = needed_package(code)
    if package is not None and importlib.util.find_spec(package) is None:
        pytest.skip(f"needs {package}")
    exec(compile(code, f"{PAGE.name} snippet {index}", "exec"), {"__name__": f"snippet_{index}"})
