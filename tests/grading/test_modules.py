"""The grading package's modules, as a reader of its code meets them."""

from __future__ import annotations

import ast
from pathlib import Path

GRADING = Path(__file__).resolve().parents[2] / "grading"


def _imports_of(path: Path) -> set[str]:
    """The modules of the grading package that ``path`` imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "grading":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("grading."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("grading.")}
    return found - {path.stem}


def test_no_two_grading_modules_import_each_other_even_through_others():
    graph = {path.stem: _imports_of(path) for path in GRADING.glob("*.py")}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for module in graph.get(todo.pop(), ()):
                if module not in seen:
                    seen.add(module)
                    todo.append(module)
        return seen

    cycles = sorted(module for module in graph if module in reachable(module))
    assert not cycles, f"grading modules on an import cycle: {cycles}"
