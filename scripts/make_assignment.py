"""Write the nbgrader source of a chapter's assignment: ``assignments/<module>/<module>.ipynb``.

Generated, not hand-edited, so that the test cells and their points stay in sync with ``course_lib``
(``@exercise("0.1", points=2)``). This file holds what every assignment shares: the cell
constructors, the exercises table, the "How to work" list, the setup cell, the test cells (one per
exercise of ``all_exercises()``) and ``--check``. Each chapter's own text (introduction, experiments,
written questions and their model answers) lives in ``scripts/assignments/<module>.py``, whose
``cells(kit)`` returns the cells that come before the tests. It lives there, not in
``assignments/<module>/``, because nbgrader releases every file of that folder to the students.

The student edits one file per chapter, ``course_lib/<module>.py``: ``pytest``, the notebook (which
imports ``course_lib``) and the grader read it. The folder of the notebook holds no copy: the
student handout puts a link ``<module>.py`` to that file beside the notebook, which is what a
submission carries (``grading.release``; the setup cell makes the link where it is missing, see
:func:`grading.check.check_hand_in`).

Usage::

    python scripts/make_assignment.py            # every chapter with a scripts/assignments/<module>.py
    python scripts/make_assignment.py numerics
    python scripts/make_assignment.py --check    # fail if a committed file differs from what it writes
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
CONTENT = Path(__file__).resolve().parent / "assignments"  # one content module per chapter
sys.path.insert(0, str(ROOT))

from course_lib import exercises  # noqa: E402
from grading.check import count  # noqa: E402


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
try:  # figures are optional: without matplotlib (plt None) the experiments print their numbers only
    import matplotlib.pyplot as plt
except ImportError:
    plt = None


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

    module: str  # the chapter module ("numerics"): the student's file is course_lib/<module>.py
    exercises: tuple[exercises.Exercise, ...]  # the chapter's exercises, in id order

    @property
    def total(self) -> float:
        """Points of the code exercises together."""
        return sum(e.points for e in self.exercises)

    @property
    def table(self) -> str:
        """The rows of a Markdown table ``| exercise | function | points |`` (header not included)."""
        return "\n".join(f"| {e.id} | `{e.qualname}` | {e.points:g} |" for e in self.exercises)

    @staticmethod
    def points(n: float) -> str:
        """``"1 point"``, ``"2.5 points"``."""
        return count(n, "point")

    def intro(self, title: str, what: str, contract: str, written: tuple[float, ...], experiments: str,
              more: str = ""):
        """The introduction cell every assignment opens with: ``title``; the exercises (``what`` they
        are about, what their docstrings' ``contract`` covers) and their table; the points of the
        code and of the ``written`` answers; ``more`` (the chapter's own paragraphs); and the "How to
        work" list with ``experiments`` as its second step."""
        answers = {1: "written answer below", 2: "two written answers below", 3: "three written answers below"}
        opening = textwrap.fill(
            f"In this assignment you complete the {len(self.exercises)} functions of **`course_lib/{self.module}.py`**, "
            f"your copy of the course's package{': ' + what.strip() if what.strip() else '.'} Each function raises "
            f"`NotImplementedError` until you write its body; its docstring states the contract ({contract.strip()}) "
            f"and gives a hint.", width=100)
        points = textwrap.fill(
            f"The code exercises are worth {self.points(self.total)}, checked automatically; the "
            f"{answers[len(written)]} ({self.points(sum(written))}) {'is' if len(written) == 1 else 'are'} "
            f"graded by hand.", width=100)
        rest = f"{more.strip()}\n\n" if more.strip() else ""
        return self.markdown("intro", f"""
# {title}

{opening}

| exercise | function | points |
|---|---|---|
{self.table}

{points}

{rest}{self.how_to_work(experiments)}
""")

    def how_to_work(self, experiments: str) -> str:
        """The "How to work" list of every introduction; ``experiments`` is its second step (what
        the chapter's experiments do), and what to hand in."""
        step = "\n".join("   " + line if i else line for i, line in enumerate(experiments.strip().splitlines()))
        return f"""How to work:

1. Edit `course_lib/{self.module}.py` in your editor: the one file that `pytest --chapter {self.module}`, the
   cells below and the grader read. The cells import it and reload it when it changes.
2. {step}
3. Run the test cell of each exercise. A test cell prints one line per test and fails with a message
   that says what is wrong.

Hand in this folder: this notebook and `{self.module}.py`, the link to your `course_lib/{self.module}.py` that
sits beside it (`nbgrader submit`, or a zip of the folder, carries the file it points to). Do not
edit the test cells: they are restored before grading, and grading runs additional hidden tests."""

    def markdown(self, grade_id: str, source: str):
        """Instructions: a locked Markdown cell."""
        return _cell("markdown", grade_id, source)

    def code(self, grade_id: str, source: str):
        """Setup or an experiment: a locked code cell (it runs at autograde, scores nothing)."""
        return _cell("code", grade_id, source)

    def setup(self, source: str = "", grade_id: str = "setup"):
        """The setup cell: reload on change, import the student's chapter module from
        ``course_lib`` (as ``<module>``) and check the file handed in beside the notebook
        (:func:`grading.check.check_hand_in`), then the chapter's own ``source``."""
        head = f"""
%load_ext autoreload
%autoreload 2

from course_lib import {self.module}  # your file: course_lib/{self.module}.py
from grading.check import check_hand_in

check_hand_in({self.module})  # {self.module}.py beside this notebook must be that file (a link to it)
"""
        return _cell("code", grade_id, head + source)

    def helpers(self):
        """What every assignment's experiments share: ``plt`` (``matplotlib.pyplot``, or ``None`` where
        matplotlib is not installed), ``attempt`` and ``max_gap``. Put it before the setup cell."""
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
### Exercise {ex.id}: `{ex.qualname}` ({count(ex.points, "point")})

{summary} Complete `{ex.qualname}` in `course_lib/{module}.py`, then run the cell below: it runs the public
tests of this exercise against your file, in a separate process. Grading runs more (hidden) tests of
the same contract, on the file you hand in.
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
        extra = sorted(p for p in path.parent.iterdir() if p != path) if path.parent.is_dir() else []
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
            stale += extra  # nbgrader would release it to the students
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for other in extra:  # e.g. the stub link of earlier versions: the notebook is all there is
            other.unlink()
        print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date or not generated (run python scripts/make_assignment.py):")
        for path in stale:
            print(f"  {path.relative_to(ROOT)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
