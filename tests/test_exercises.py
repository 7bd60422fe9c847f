"""The exercise mechanism itself: modes, dispatch, the registry, and argument checks."""

import ast
import inspect
import sys
from pathlib import Path

import pytest
import torch

from course_lib import exercises, numerics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mode(monkeypatch):
    """Set the mode for one test only (the env vars are restored afterwards)."""

    def set_(name, student_modules=""):
        monkeypatch.setenv(exercises.MODE_ENV, name)
        monkeypatch.setenv(exercises.STUDENT_MODULES_ENV, student_modules)

    return set_


def test_student_mode_is_the_default_and_runs_the_stub(monkeypatch):
    monkeypatch.delenv(exercises.MODE_ENV, raising=False)
    assert exercises.get_mode() == "student"
    with pytest.raises(NotImplementedError, match="Exercise 0.1"):
        numerics.stable_softmax(torch.zeros(3))


def test_solution_mode_runs_the_reference(mode):
    mode("solution")
    assert torch.allclose(numerics.stable_softmax(torch.zeros(4)), torch.full((4,), 0.25))


def test_student_modules_keep_student_code_in_solution_mode(mode):
    mode("solution", student_modules="numerics")
    assert not exercises.uses_reference("numerics")
    with pytest.raises(NotImplementedError):
        numerics.logsumexp(torch.zeros(3))


def test_unknown_mode_is_rejected(mode):
    mode("teacher")
    with pytest.raises(ValueError, match="COURSE_LIB_MODE"):
        numerics.stable_softmax(torch.zeros(3))
    with pytest.raises(ValueError, match="mode"):
        exercises.set_mode("teacher")
    with pytest.raises(ValueError, match="student_modules"):
        exercises.set_mode("solution", ["no_such_chapter"])


def test_solution_mode_without_solutions_says_so(mode, monkeypatch):
    mode("solution")
    monkeypatch.setitem(sys.modules, "solutions", None)
    monkeypatch.delitem(sys.modules, "solutions.numerics", raising=False)
    with pytest.raises(RuntimeError, match="not part of the student handout"):
        numerics.stable_softmax(torch.zeros(3))


@pytest.mark.parametrize("ex", exercises.all_exercises(), ids=lambda e: e.id)
def test_every_exercise_has_a_reference_with_the_same_signature(ex):
    stub = exercises.stub(ex)
    assert inspect.signature(exercises.reference(ex)) == inspect.signature(stub)


@pytest.mark.parametrize("ex", exercises.all_exercises(), ids=lambda e: e.id)
def test_every_stub_raises_not_implemented_naming_its_exercise(ex):
    stub = exercises.stub(ex)
    body = ast.parse(inspect.cleandoc("\n" + inspect.getsource(stub))).body[0].body
    last = body[-1]
    assert isinstance(last, ast.Raise) and ast.unparse(last.exc.func) == "NotImplementedError"
    assert f"Exercise {ex.id}" in ast.literal_eval(last.exc.args[0])
    assert ast.get_docstring(ast.parse(inspect.cleandoc("\n" + inspect.getsource(stub))).body[0])


def test_exercise_ids_follow_chapter_order():
    for ex in exercises.all_exercises():
        assert int(ex.id.split(".")[0]) == exercises.CHAPTER_MODULES.index(ex.module)


def test_exercises_are_found_by_id_and_by_name():
    assert exercises.find("0.4") is exercises.find("cross_entropy")
    with pytest.raises(KeyError):
        exercises.find("99.1")


@pytest.mark.parametrize("call, error, names", [
    (lambda: numerics.stable_softmax([1.0, 2.0]), TypeError, "logits"),
    (lambda: numerics.stable_softmax(torch.arange(3)), TypeError, "logits"),
    (lambda: numerics.stable_softmax(torch.zeros(2, 0)), ValueError, "logits"),
    (lambda: numerics.log_softmax(torch.zeros(2, 3), dim=2), ValueError, "dim"),
    (lambda: numerics.logsumexp(torch.tensor(1.0)), ValueError, "x"),
    (lambda: numerics.cross_entropy(torch.zeros(4, 5), torch.zeros(3, dtype=torch.long)), ValueError, "targets"),
    (lambda: numerics.cross_entropy(torch.zeros(4, 5), torch.full((4,), 5)), ValueError, "targets"),
    (lambda: numerics.cross_entropy(torch.zeros(4, 5), torch.zeros(4)), TypeError, "targets"),
    (lambda: numerics.cross_entropy(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), label_smoothing=2.0),
     ValueError, "label_smoothing"),
    (lambda: numerics.cross_entropy(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), reduction="avg"),
     ValueError, "reduction"),
])
def test_bad_input_gets_an_error_naming_the_argument(mode, call, error, names):
    mode("solution")
    with pytest.raises(error, match=names):
        call()


def test_an_import_error_names_the_file_and_the_line(tmp_path, monkeypatch):
    broken = tmp_path / "broken_chapter.py"
    broken.write_text("import math\n\ndef f(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SyntaxError) as syntax:
        __import__("broken_chapter")
    assert exercises.describe_import_error(syntax.value).startswith(f"{broken}, line 3: SyntaxError:")
    raising = tmp_path / "raising_chapter.py"
    raising.write_text("import math\nvalue = math.nothing_here\n")
    with pytest.raises(AttributeError) as attribute:
        __import__("raising_chapter")
    assert exercises.describe_import_error(attribute.value).startswith(
        f"{raising}, line 2: AttributeError: module 'math' has no attribute")
