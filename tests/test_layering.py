"""The structure drawing: which part of the package may import which (documentation/architecture.md).

Every module of ``hiennu`` is parsed (``ast``, imports inside functions included) and each import
of another part of the package is checked against :data:`ALLOWED`. A part is a folder
(``hiennu/planning/``) or a top-level module (``hiennu/plans.py``); imports within one part are
always allowed. A new folder or top-level module has to be added to the table, on purpose.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import hiennu

PACKAGE = Path(hiennu.__file__).resolve().parent

# the ground floor: shared by every stage, imports nothing above itself ("hiennu" is the package's
# own __init__, which holds the version)
GROUND = frozenset({"hiennu", "errors", "log", "paths", "plans", "parallel", "device", "masks", "provenance", "io",
                    "memory", "windows"})

# part -> the parts it may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    **{part: GROUND for part in GROUND},
    "geometry": GROUND,
    "datasets": GROUND,
    "networks": GROUND,
    "losses": GROUND,
    "planning": GROUND | {"geometry"},
    "preprocessing": GROUND | {"geometry"},
    # commands that chain several stages: plan_and_preprocess, and the default model (plan, train, choose, export)
    "pipeline": GROUND | {"geometry", "datasets", "planning", "preprocessing", "inference", "training", "ensembling",
                          "postprocessing"},
    "evaluation": GROUND,
    "postprocessing": GROUND | {"evaluation"},
    "inference": GROUND | {"geometry", "preprocessing", "networks", "postprocessing"},
    "training": GROUND | {"networks", "losses", "inference", "evaluation", "postprocessing"},
    "ensembling": GROUND | {"evaluation", "postprocessing", "inference"},
    "study": GROUND | {"geometry", "datasets", "networks", "losses", "planning", "preprocessing", "pipeline",
                       "inference", "evaluation", "postprocessing", "training"},
}
ALLOWED["cli"] = frozenset(ALLOWED) - {"cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """``hiennu.planning.splits`` -> ``planning``; ``hiennu.plans`` -> ``plans``; ``hiennu`` and a name
    of the package's own ``__init__`` (``hiennu.__version__``) -> ``hiennu``."""
    names = module.split(".")
    if len(names) > 1 and ((PACKAGE / names[1]).is_dir() or (PACKAGE / f"{names[1]}.py").is_file()):
        return names[1]
    return "hiennu"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every hiennu import in ``path`` (``from hiennu.x import y`` counts as
    ``hiennu.x.y``, so ``from hiennu import device`` names the part ``device``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found += [(node.lineno, f"{source}.{a.name}") for a in node.names]
    return [(line, m) for line, m in found if m == "hiennu" or m.startswith("hiennu.")]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_part_of_the_package_is_in_the_table():
    parts = {_part(_module_name(p)) for p in _modules()}
    assert parts - set(ALLOWED) == set(), "add the new folder or module to ALLOWED (and to architecture.md)"
    assert set(ALLOWED) - parts == set(), "a part in ALLOWED no longer exists; remove it"


def test_no_part_imports_a_part_above_it():
    wrong = []
    for path in _modules():
        part = _part(_module_name(path))
        for line, imported in _imported_modules(path):
            target = _part(imported)
            if target != part and target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({part}) imports {imported} ({target})")
    assert not wrong, "imports against the structure drawing:\n" + "\n".join(wrong)


def test_the_check_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The parser is what the table rests on: plain, from, relative and in-function imports all count."""
    fake = tmp_path / "hiennu"
    (fake / "planning").mkdir(parents=True)
    for name in ("__init__.py", "planning/__init__.py", "training.py"):
        (fake / name).write_text("")
    (fake / "planning" / "x.py").write_text(
        "import hiennu.training\nfrom hiennu import __version__\nfrom . import y\nfrom ..training import z\n"
        "def f():\n    from hiennu.training import w\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    imported = [m for _, m in _imported_modules(fake / "planning" / "x.py")]
    assert imported == ["hiennu.training", "hiennu.__version__", "hiennu.planning.y", "hiennu.training.z",
                        "hiennu.training.w"]
    assert [_part(m) for m in imported] == ["training", "hiennu", "planning", "training", "training"]
