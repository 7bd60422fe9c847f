"""Every chapter's assignment notebook (scripts/make_assignment.py): present and up to date, one
autograded cell per exercise with the registry's points, a written answer graded by hand, an
experiment; nbgrader releases it without solutions; the setup cell's check of the file handed in
beside the notebook. (The notebooks are run, on the stub, on one finished exercise and on the
reference, where they are graded: tests/grading/test_chapter_grading.py.)"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import exercises
from grading.check import check_hand_in, count

ROOT = Path(__file__).resolve().parents[2]
MODULES = exercises.CHAPTER_MODULES


def _generator():
    spec = importlib.util.spec_from_file_location("make_assignment", ROOT / "scripts" / "make_assignment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


def _notebook(module: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "assignments" / module / f"{module}.ipynb", as_version=4)


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _model_answer_lines(module: str) -> list[str]:
    """Lines of the written model answers (between the solution delimiters), long enough to mean something."""
    lines = []
    for cell in _notebook(module).cells:
        if cell.cell_type == "markdown" and _nbgrader(cell).get("solution"):
            region = re.search(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, re.S).group(1)
            lines += [line.strip() for line in region.splitlines() if len(line.strip()) >= 30]
    return lines


# -- the source notebooks --------------------------------------------------------------------------
def test_every_chapter_has_an_assignment_and_the_committed_files_are_current():
    assert _generator().assignments() == sorted(MODULES), "scripts/assignments/<module>.py per chapter module"
    for module in MODULES:
        folder = ROOT / "assignments" / module
        # Only the notebook: content with model answers never sits in the nbgrader source folder (all
        # of it is released), and neither does a copy of the chapter module (the student's one file
        # is course_lib/<module>.py; the handout links to it beside the notebook).
        assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == [f"{module}.ipynb"]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_assignment.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module", MODULES)
def test_one_autograded_cell_per_exercise_with_the_registrys_points(module):
    chapter = {e.id: e.points for e in exercises.all_exercises() if e.module == module}
    graded_code = {_nbgrader(c)["grade_id"]: c for c in _notebook(module).cells
                   if c.cell_type == "code" and _nbgrader(c).get("grade")}
    assert set(graded_code) == {f"test_{ex.replace('.', '_')}" for ex in chapter}
    for ex, points in chapter.items():
        cell = graded_code[f"test_{ex.replace('.', '_')}"]
        assert _nbgrader(cell)["points"] == points and not _nbgrader(cell)["solution"]
        assert _nbgrader(cell)["locked"] and cell.metadata["editable"] is False
        assert f'check("{ex}")' in cell.source
        assert re.search(rf'### BEGIN HIDDEN TESTS\ncheck\("{re.escape(ex)}", hidden=True\)\n### END HIDDEN TESTS',
                         cell.source), cell.source


@pytest.mark.parametrize("module", MODULES)
def test_written_answers_graded_by_hand_and_an_experiment_on_the_students_module(module):
    cells = _notebook(module).cells
    answers = [c for c in cells if c.cell_type == "markdown" and _nbgrader(c).get("grade")]
    assert answers, "at least one written question graded by hand"
    for cell in answers:
        meta = _nbgrader(cell)
        assert meta["solution"] and meta["points"] > 0 and not meta["locked"]
        assert cell.source.startswith("### BEGIN SOLUTION\n") and cell.source.endswith("\n### END SOLUTION")
        heading = cells[cells.index(cell) - 1]  # the question, with the same points in its heading
        assert heading.cell_type == "markdown" and f"({count(meta['points'], 'point')}, graded by hand)" in heading.source
    experiments = [c for c in cells if _nbgrader(c)["grade_id"].startswith("experiment")]
    assert experiments and all(c.cell_type == "code" and not _nbgrader(c)["grade"] for c in experiments)
    setup = next(c for c in cells if _nbgrader(c)["grade_id"] == "setup")
    assert f"from course_lib import {module}  # your file" in setup.source
    assert f"check_hand_in({module})" in setup.source
    assert any(f"{module}." in c.source for c in experiments), "the experiment uses the student's module"


@pytest.mark.parametrize("module", MODULES)
def test_cell_ids_and_grade_ids_are_unique(module):
    cells = _notebook(module).cells
    ids = [c.id for c in cells]
    grade_ids = [_nbgrader(c)["grade_id"] for c in cells]
    assert len(set(ids)) == len(ids) and len(set(grade_ids)) == len(grade_ids)
    assert all(_nbgrader(c)["schema_version"] == 3 for c in cells)


# -- what nbgrader releases ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def released(handout):
    """Every assignment as nbgrader's generate_assignment releases it: the handout's (``./course release``
    runs :func:`grading.release.release_notebooks`), made once per test run."""
    return handout / "assignments"


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_nbgrader_releases_the_notebook_without_solutions(released, module):
    folder = released / module
    # the notebook, and beside it the link to the one file the student edits (release.link_chapter_file)
    assert sorted(p.name for p in folder.iterdir()) == [f"{module}.ipynb", f"{module}.py"]
    assert (folder / f"{module}.py").readlink() == Path("..", "..", "course_lib", f"{module}.py")
    text = (folder / f"{module}.ipynb").read_text()
    for secret in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN", "hidden=True", *_model_answer_lines(module)):
        assert secret not in text, f"the release of {module} contains {secret!r}"
    nb = nbformat.reads(text, as_version=4)
    assert not [c for c in nb.cells if c.get("outputs")]
    for ex in (e for e in exercises.all_exercises() if e.module == module):
        assert any(f'check("{ex.id}")' in c.source for c in nb.cells), f"no public test cell for {ex.id}"


# -- the file handed in beside the notebook --------------------------------------------------------
@pytest.fixture
def chapter_file(tmp_path):
    """A stand-in for ``course_lib.numerics`` (only its name and file matter) and a notebook folder."""
    import types

    own = tmp_path / "course_lib" / "numerics.py"
    own.parent.mkdir()
    own.write_text("# the student's work\n")
    module = types.ModuleType("course_lib.numerics")
    module.__file__ = str(own)
    folder = tmp_path / "assignment"
    folder.mkdir()
    return module, own, folder


def test_check_hand_in_links_a_missing_file_to_the_students_module(chapter_file):
    module, own, folder = chapter_file
    verdict = check_hand_in(module, folder)
    assert (folder / "numerics.py").is_symlink() and (folder / "numerics.py").resolve() == own.resolve()
    assert "now a link" in verdict
    assert "is your" in check_hand_in(module, folder)  # and from then on it is the same file


def test_check_hand_in_accepts_a_file_with_the_same_contents(chapter_file):
    module, own, folder = chapter_file
    (folder / "numerics.py").write_text(own.read_text())  # a submission being graded
    assert "is your" in check_hand_in(module, folder)


def test_check_hand_in_warns_about_a_second_copy_that_differs(chapter_file):
    module, own, folder = chapter_file
    (folder / "numerics.py").write_text("# the untouched stub nbgrader fetched\n")
    verdict = check_hand_in(module, folder)
    assert verdict.startswith("WARNING") and str(own) in verdict and "ln -sf" in verdict


def test_check_hand_in_writes_nothing_during_batch_grading(chapter_file, monkeypatch):
    module, own, folder = chapter_file
    monkeypatch.setenv("COURSE_CHECK_DEFER", "1")
    assert "not in this submission" in check_hand_in(module, folder)
    assert not (folder / "numerics.py").exists()
