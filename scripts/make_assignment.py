"""Write the nbgrader source of a chapter's assignment: ``assignments/<module>/<module>.ipynb`` and,
beside it, ``<module>.py``, a symlink to the chapter's stub module ``course_lib/<module>.py`` (what
the student completes and hands in with the notebook; nbgrader releases a copy of the file).

Generated, not hand-edited, so that the test cells, their points and the stub module stay in sync
with ``course_lib`` (``@exercise("0.1", points=2)``). This file holds what every assignment shares:
the cell constructor, the exercises table, the test cells (one per exercise of ``all_exercises()``),
the stub symlink and ``--check``. Each chapter's own text (introduction, experiment, written
questions and their model answers) lives in ``scripts/assignments/<module>.py``, whose
``cells(kit)`` returns the cells that come before the tests. It lives there, not in
``assignments/<module>/``, because nbgrader releases every file of that folder to the students.

Usage::

    python scripts/make_assignment.py            # every chapter with a scripts/assignments/<module>.py
    python scripts/make_assignment.py numerics
    python scripts/make_assignment.py --check    # fail if a committed file differs from what it writes
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
CONTENT = Path(__file__).resolve().parent / "assignments"  # one content module per chapter
sys.path.insert(0, str(ROOT))

from course_lib import exercises  # noqa: E402


def _cell(kind: str, grade_id: str, source: str, *, grade: bool = False, solution: bool = False,
          locked: bool = True, points: float | None = None, task: bool = False):
    """A cell with nbgrader metadata (schema 3) and a stable id (its grade_id)."""
    make = new_code_cell if kind == "code" else new_markdown_cell
    cell = make(source.strip("\n"))
    cell.id = grade_id.replace("_", "-")
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked and not solution,
            "schema_version": 3, "solution": solution, "task": task}
    if points is not None:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    if kind == "code":
        cell.metadata["editable"] = not meta["locked"]
        cell.metadata["deletable"] = not meta["locked"]
    return cell


EXPERIMENT_HELPERS = '''
def attempt(label, fn, *args, **kwargs):
    """Run one step of an experiment; an unfinished or failing exercise gives None and a message."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        print(f"{label}: not done yet: {err}")
    except Exception as err:
        print(f"{label}: {type(err).__name__}: {err}")
    return None


def max_gap(a, b):
    """Largest absolute difference of two tensors (NaN anywhere gives NaN)."""
    return (a.double() - b.double()).abs().max().item()
'''


@dataclass(frozen=True)
class Kit:
    """What a chapter's content module gets: its chapter and the constructors of the cells it may use."""

    module: str  # the chapter module ("numerics"): the student's file is <module>.py beside the notebook
    exercises: tuple[exercises.Exercise, ...]  # the chapter's exercises, in id order

    @property
    def total(self) -> float:
        """Points of the code exercises together."""
        return sum(e.points for e in self.exercises)

    @property
    def table(self) -> str:
        """The rows of a Markdown table ``| exercise | function | points |`` (header not included)."""
        return "\n".join(f"| {e.id} | `{e.qualname}` | {e.points:g} |" for e in self.exercises)

    @property
    def test_and_hand_in(self) -> str:
        """The last step of every introduction's "How to work" list, and what to hand in."""
        return (f"3. Run the test cell of each exercise. A test cell prints one line per test and fails with a message\n"
                f"   that says what is wrong.\n\n"
                f"Hand in this notebook **and** `{self.module}.py`. Do not rename the file and do not edit the test cells:\n"
                f"they are restored before grading, and grading runs additional hidden tests.")

    def markdown(self, grade_id: str, source: str):
        """Instructions: a locked Markdown cell."""
        return _cell("markdown", grade_id, source)

    def code(self, grade_id: str, source: str):
        """Setup or an experiment: a locked code cell (it runs at autograde, scores nothing)."""
        return _cell("code", grade_id, source)

    def helpers(self):
        """The helpers every assignment's experiments share: ``attempt`` and ``max_gap``. Put it
        before the setup cell; it imports nothing."""
        return _cell("code", "helpers", EXPERIMENT_HELPERS)

    def written_answer(self, grade_id: str, model_answer: str, points: float):
        """The student's answer cell of a written question, graded by hand. ``model_answer`` is what
        the instructor's copy shows; nbgrader releases the cell with a placeholder instead."""
        return _cell("markdown", grade_id, f"### BEGIN SOLUTION\n{model_answer.strip()}\n### END SOLUTION",
                     grade=True, solution=True, points=points)


def test_cells(module: str) -> list:
    """A heading, then one instruction cell and one autograded test cell per exercise of ``module``."""
    cells = [_cell("markdown", "about_tests", """
## Tests

Each cell below checks one exercise (the points are in its heading). Run them after each change.
""")]
    for ex in (e for e in exercises.all_exercises() if e.module == module):
        summary = inspect.getdoc(exercises.stub(ex)).splitlines()[0]
        key = ex.id.replace(".", "_")
        cells.append(_cell("markdown", f"about_{key}", f"""
### Exercise {ex.id}: `{ex.qualname}` ({ex.points:g} points)

{summary} Complete `{ex.qualname}` in `{module}.py`, then run the cell below: it runs the public tests of
this exercise against your file, in a separate process. Grading runs more (hidden) tests of the same
contract, on the file you hand in.
"""))
        cells.append(_cell("code", f"test_{key}", f"""
from grading.check import check
check("{ex.id}")
### BEGIN HIDDEN TESTS
check("{ex.id}", hidden=True)
### END HIDDEN TESTS
""", grade=True, points=ex.points))
    return cells


def assignments() -> list[str]:
    """The chapter modules that have a content module ``scripts/assignments/<module>.py``."""
    return sorted(p.stem for p in CONTENT.glob("*.py") if not p.name.startswith("_"))


def content(module: str):
    """``scripts/assignments/<module>.py``, loaded from its file (the name ``assignments`` is also the
    nbgrader source folder at the repository root, so it is not imported as a package)."""
    path = CONTENT / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"assignment_content_{module}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def notebook(module: str) -> nbformat.NotebookNode:
    """The source notebook: the chapter's cells (its content module), then the generated tests."""
    kit = Kit(module, tuple(e for e in exercises.all_exercises() if e.module == module))
    nb = new_notebook(cells=[*content(module).cells(kit), *test_cells(module)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def notebook_text(module: str) -> str:
    nb = notebook(module)
    nbformat.validate(nb)
    ids = [cell.id for cell in nb.cells]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{module}: cell ids (grade ids) used twice: {duplicates}")
    return nbformat.writes(nb) + "\n"


def stub_link(module: str) -> tuple[Path, str]:
    """``assignments/<module>/<module>.py``: a relative symlink to ``course_lib/<module>.py``, so the
    stub the student gets is always the package's (nbgrader copies the file it points to)."""
    return ROOT / "assignments" / module / f"{module}.py", f"../../course_lib/{module}.py"


def main(argv: list[str] | None = None) -> int:
    known = assignments()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"chapter modules (default: {', '.join(known)})")
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    stale = []
    for module in args.modules or known:
        if module not in known:
            parser.error(f"no assignment for {module!r} (scripts/assignments/{module}.py); known: {', '.join(known)}")
        path, text = ROOT / "assignments" / module / f"{module}.ipynb", notebook_text(module)
        link, target = stub_link(module)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
            if not link.is_symlink() or os.readlink(link) != target or not link.is_file():
                stale.append(link)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        print(f"wrote {path.relative_to(ROOT)}, {link.relative_to(ROOT)} -> {target}")
    if stale:
        print("out of date (run python scripts/make_assignment.py):")
        for path in stale:
            print(f"  {path.relative_to(ROOT)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
