"""Every chapter's assignment notebook (scripts/make_assignment.py): present and up to date, one
autograded cell per exercise with the registry's points, a written answer graded by hand, an
experiment; nbgrader releases it without solutions; its experiment runs on the untouched stub and on
the reference without an error."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import exercises
from grading import release

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
        assert (folder / f"{module}.ipynb").is_file()
        assert (folder / f"{module}.py").is_symlink(), f"{module}.py must link to course_lib/{module}.py"
        assert (folder / f"{module}.py").resolve() == ROOT / "course_lib" / f"{module}.py"
        # Content with model answers never sits in the nbgrader source folder (all of it is released).
        assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == sorted(
            [f"{module}.ipynb", f"{module}.py"])
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
        assert heading.cell_type == "markdown" and f"({meta['points']:g} points, graded by hand)" in heading.source
    experiments = [c for c in cells if _nbgrader(c)["grade_id"].startswith("experiment")]
    assert experiments and all(c.cell_type == "code" and not _nbgrader(c)["grade"] for c in experiments)
    assert any(f"import {module}  # your file" in c.source for c in cells if c.cell_type == "code")
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
def released(tmp_path_factory):
    """Every assignment as nbgrader's generate_assignment releases it (grading.release's way)."""
    out = tmp_path_factory.mktemp("assignments")
    release.release_notebooks(ROOT / "assignments", out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_nbgrader_releases_the_notebook_without_solutions_and_the_stub_as_a_file(released, module):
    folder = released / module
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{module}.ipynb", f"{module}.py"])
    stub = folder / f"{module}.py"
    assert not stub.is_symlink() and stub.read_text() == (ROOT / "course_lib" / f"{module}.py").read_text()
    text = (folder / f"{module}.ipynb").read_text()
    for secret in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN", "hidden=True", *_model_answer_lines(module)):
        assert secret not in text, f"the release of {module} contains {secret!r}"
    nb = nbformat.reads(text, as_version=4)
    assert not [c for c in nb.cells if c.get("outputs")]
    for ex in (e for e in exercises.all_exercises() if e.module == module):
        assert any(f'check("{ex.id}")' in c.source for c in nb.cells), f"no public test cell for {ex.id}"


def _run_experiment(folder: Path, module: str, mode: str) -> dict[str, list]:
    """Execute the setup and experiment cells (every code cell that is not a test) of the released
    notebook in ``folder`` in a fresh kernel; ``mode`` "student" runs the stub, "solution" the
    reference through it. Returns each executed cell's outputs by grade id."""
    from nbclient import NotebookClient

    nb = nbformat.read(folder / f"{module}.ipynb", as_version=4)
    nb.cells = [c for c in nb.cells if c.cell_type == "code" and not _nbgrader(c).get("grade")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_LIB_", "PYTHON", "PYTEST_", "MPLBACKEND"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")  # as the grading kernel (nbgrader_config.py)
    if mode == "solution":
        env["COURSE_LIB_MODE"] = "solution"
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(folder)}}).execute(env=env)
    return {_nbgrader(c)["grade_id"]: c.outputs for c in nb.cells}


def _printed(outputs: list) -> str:
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


# What each chapter's experiment prints when every exercise is right (the reference behind the stub).
SOLVED_OUTPUT = {
    "numerics": ["cross_entropy: yours"],
    "tokenization": ["joined back to the text: True", "train_bpe: 768 merges", " 1024 tokens: ",
                     "word_tokenize: ", "decode(encode(held-out text)) == text: True",
                     "encode_iterable over", "gives the same ids: True\ntokenizers.Tokenizer from your "
                     "tokenizer.json gives the same ids: True", "tokenizers' trainer: 768 merges", "bytes/token"],
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["student", "solution"])
@pytest.mark.parametrize("module", MODULES)
def test_the_released_experiment_runs_on_the_stub_and_on_a_finished_module(released, module, mode, tmp_path):
    folder = tmp_path / module
    folder.mkdir()
    for path in (released / module).iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    outputs = _run_experiment(folder, module, mode)
    errors = {cell: [o for o in out if o.output_type == "error"] for cell, out in outputs.items()}
    assert not any(errors.values()), {cell: [(e.ename, e.evalue) for e in errs] for cell, errs in errors.items() if errs}
    printed = "".join(_printed(out) for out in outputs.values())
    first = next(e for e in exercises.all_exercises() if e.module == module)
    if mode == "student":
        assert f"not done yet: Exercise {first.id}" in printed, printed
    else:
        assert "not done yet" not in printed and " raised " not in printed and "Error:" not in printed, printed
        for expected in SOLVED_OUTPUT.get(module, []):
            assert expected in printed, f"{expected!r} not in\n{printed}"
        if module == "tokenization":
            assert any("image/png" in o.get("data", {}) for o in outputs["experiment_compression"]), "no plot"
