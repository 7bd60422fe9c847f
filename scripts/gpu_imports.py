"""Which Python distributions the GPU check needs that the GPU machine lacks (``gpu_check.sh --dry-run``).

The GPU machine has no package registry: what it lacks must be carried as wheels in ``.gpu-wheels/``
(``../shared/gpu/wheels.sh``, with ``EXTRA`` for more names). This reads every import statement of
the files the GPU check runs (the chapter tests, ``course_lib``, ``solutions``, the parts of
``grading`` a test run loads, ``benchmarks``), maps each imported name to the distribution that
provides it here (``importlib.metadata.packages_distributions``), adds what those require (as
installed here), and reports the distributions that
are neither in ``scripts/gpu_packages.txt`` (the machine's image) nor among the wheels, nor part of
Python or of this repository. Imports inside functions count too: a test may reach them.

    python scripts/gpu_imports.py [--wheels .gpu-wheels]      exit 1 if something is missing
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a GPU run imports: not the grading infrastructure (sandbox batch runs, nbgrader, the handout).
FILES = ["tests/conftest.py", "tests/test_*.py", "tests/hidden/*.py", "course_lib/*.py", "solutions/*.py",
         "benchmarks/*.py", "grading/__init__.py", "grading/pytest_plugin.py", "grading/door.py",
         "grading/codec.py", "grading/expect.py", "grading/sandbox.py"]
LOCAL = {"course_lib", "solutions", "grading", "tests", "benchmarks"}
# The book's page helpers (myst-nb's glue and the like): only the book imports them, never a GPU run.
BOOK_ONLY = {"course_lib/book.py"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_names(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def needed() -> dict[str, set[str]]:
    """Distribution -> the files that import it (standard library and this repository left out)."""
    providers = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for pattern in FILES:
        for path in sorted(ROOT.glob(pattern)):
            if path.relative_to(ROOT).as_posix() in BOOK_ONLY:
                continue
            for name in imported_names(path):
                if name in sys.stdlib_module_names or name in LOCAL or name == "__future__":
                    continue
                for dist in providers.get(name, [f"(no installed distribution provides {name!r})"]):
                    found.setdefault(canonical(dist), set()).add(f"imported by {path.relative_to(ROOT)}")
    return found


def with_requirements(found: dict[str, set[str]], image: set[str]) -> dict[str, set[str]]:
    """``found`` and, transitively, what those of them that the machine's ``image`` lacks (carried as
    wheels, or missing) require as installed here; requirements behind an extra or a marker that
    does not hold here are left out. (What the image has comes with its own requirements there.)"""
    from packaging.requirements import Requirement

    todo, out = [d for d in found if d not in image], {d: set(f) for d, f in found.items()}
    while todo:
        dist = todo.pop()
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonical(req.name)
            if name not in out:
                out[name] = {f"required by {dist}"}
                if name not in image:
                    todo.append(name)
    return out


def image() -> set[str]:
    """The distributions of the GPU machine's image (``scripts/gpu_packages.txt``)."""
    listed = (ROOT / "scripts" / "gpu_packages.txt").read_text().splitlines()
    return {canonical(line) for line in listed if line.strip() and not line.startswith("#")}


def carried(wheels: Path) -> set[str]:
    return {canonical(w.name.split("-")[0]) for w in wheels.glob("*.whl")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels")
    args = parser.parse_args(argv)
    there, wheels = image(), carried(args.wheels)
    missing = {dist: files for dist, files in with_requirements(needed(), there).items()
               if dist not in there | wheels}
    print(f"wheels in {args.wheels}: {', '.join(sorted(wheels)) or 'none'}")
    if not missing:
        print("every import of the GPU run is on the GPU machine or among the wheels")
        return 0
    print("missing on the GPU machine (add them to EXTRA for ../shared/gpu/wheels.sh):")
    for dist, files in sorted(missing.items()):
        print(f"  {dist}: {', '.join(sorted(files)[:4])}{' ...' if len(files) > 4 else ''}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
