"""The exercise mechanism: stubs, the reference solutions, and the one switch between them.

A graded function in a chapter module is declared with ``@exercise("0.1", points=2)``. Its body is
the *stub* that the student completes. Which body runs is decided at call time, here and nowhere
else:

- **student mode** (the default): the body in ``course_lib`` runs, so an unfinished exercise raises
  ``NotImplementedError`` naming itself.
- **solution mode** (``COURSE_LIB_MODE=solution`` or :func:`set_mode`): the function of the same
  qualified name in ``solutions/<module>.py`` runs instead. The book build, the instructor's runs and
  CI use it.
- **grading a chapter**: solution mode with ``COURSE_LIB_STUDENT_MODULES=numerics`` (a comma list)
  runs the student's code for those chapter modules and the reference everywhere else, so that one
  early mistake is not charged again in every later chapter.

The switch lives in environment variables so that subprocesses (notebook kernels, the grading
sandbox) inherit it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

MODE_ENV = "COURSE_LIB_MODE"
STUDENT_MODULES_ENV = "COURSE_LIB_STUDENT_MODULES"
MODES = ("student", "solution")

# Chapter modules in teaching order; a chapter's exercise ids start with its index here.
CHAPTER_MODULES: tuple[str, ...] = ("numerics", "tokenization", "attention", "transformer", "generation",
                                     "pretraining", "instruct", "sft", "lora", "alignment", "evaluation",
                                     "quantization")


@dataclass(frozen=True)
class Exercise:
    """One graded exercise: its id ("0.1"), chapter module, qualified name and points.

    ``qualname`` is what the student completes: a function (``"stable_softmax"``) or a method
    (``"AdamW.step"``). ``entry``, when given, is the qualified name of the implemented function that
    tests call instead: a method is graded through a function that builds its object from plain data,
    runs it and returns plain data (only such data crosses the grading door).
    """

    id: str
    module: str
    qualname: str
    points: float
    entry: str | None = None

    @property
    def name(self) -> str:
        """The entry point's name as tests call it (the last part of its qualified name)."""
        return (self.entry or self.qualname).rsplit(".", 1)[-1]


_REGISTRY: dict[str, Exercise] = {}


def chapters_before(module: str) -> tuple[str, ...]:
    """The chapter modules taught before ``module`` (the ones its code may build on)."""
    return CHAPTER_MODULES[:CHAPTER_MODULES.index(module)]


def get_mode() -> str:
    """The current mode, "student" or "solution"."""
    mode = os.environ.get(MODE_ENV, "student") or "student"
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}: expected one of {MODES}")
    return mode


def set_mode(mode: str, student_modules: Iterable[str] = ()) -> None:
    """Switch every exercise of this process (and the subprocesses it starts) to ``mode``.

    ``student_modules`` (solution mode only) names chapter modules whose student code still runs.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    student_modules = tuple(student_modules)
    unknown = set(student_modules) - set(CHAPTER_MODULES)
    if unknown:
        raise ValueError(f"student_modules: unknown chapter modules {sorted(unknown)}")
    os.environ[MODE_ENV] = mode
    os.environ[STUDENT_MODULES_ENV] = ",".join(student_modules)


def uses_reference(module: str) -> bool:
    """Whether exercises of chapter ``module`` run the reference solution right now."""
    if get_mode() != "solution":
        return False
    student = {m for m in os.environ.get(STUDENT_MODULES_ENV, "").split(",") if m}
    return module not in student


# Written by the batch grader (grading.kernel.course_library) into a confined kernel's copy of course_lib:
# {chapter module: sha256 of its file} for the chapters it completed with the reference.
REFERENCE_COPIES = "reference_copies.json"


def implementation(module: str) -> str:
    """Which code runs chapter ``module``'s exercises, as the course cache keys what that code builds:
    ``"reference"`` where the reference solutions run (:func:`uses_reference`) or where the module's file
    is a copy of them that the batch grader wrote (listed in ``course_lib/reference_copies.json`` with
    this very file's hash), else a hash of the file (a student's code: an edit builds anew)."""
    import hashlib
    import json

    if uses_reference(module):
        return "reference"
    path = Path(importlib.import_module(f"course_lib.{module}").__file__)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        copies = json.loads((Path(__file__).with_name(REFERENCE_COPIES)).read_text())
    except (OSError, ValueError):
        copies = {}
    return "reference" if isinstance(copies, dict) and copies.get(module) == digest else digest[:16]


def reference_package():
    """The ``solutions`` package, or None where there is none. It is no part of the installed
    package: it is imported as it is found on ``sys.path`` (a grading sandbox's folder, the
    repository as the working folder) or else from the repository that holds this ``course_lib``
    (an editable install), never from an installed copy elsewhere."""
    import sys

    if "solutions" in sys.modules:
        return sys.modules["solutions"]
    try:
        return importlib.import_module("solutions")
    except ModuleNotFoundError as err:
        if err.name != "solutions":
            raise
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "solutions")
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        return None
    spec = importlib.util.spec_from_file_location("solutions", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules["solutions"] = package
    spec.loader.exec_module(package)
    return package


def reference(ex: Exercise) -> Callable:
    """The reference implementation of ``ex`` from ``solutions/<module>.py``."""
    try:
        if reference_package() is None:
            raise ModuleNotFoundError("no module named 'solutions'", name="solutions")
        target = importlib.import_module(f"solutions.{ex.module}")
    except ModuleNotFoundError as err:
        if err.name not in ("solutions", f"solutions.{ex.module}"):
            raise
        raise RuntimeError(
            f"{MODE_ENV}=solution needs the reference solutions (solutions/{ex.module}.py), "
            "which are not part of the student handout. Unset it to run your own code."
        ) from None
    for part in ex.qualname.split("."):
        target = getattr(target, part)
    return target


def exercise(id: str, *, points: float, validate: Callable | None = None,
             entry: str | None = None) -> Callable[[Callable], Callable]:
    """Declare the decorated function (or method) as graded exercise ``id`` worth ``points``.

    ``validate``, if given, is called with the same arguments before either body runs and raises a
    clear error naming a bad argument; it is part of the package, not of the exercise. ``entry``
    names the function of the same module that tests call for a method (see :class:`Exercise`).
    """

    def decorate(stub: Callable) -> Callable:
        module = stub.__module__.rsplit(".", 1)[-1]
        ex = Exercise(id=id, module=module, qualname=stub.__qualname__, points=points, entry=entry)
        for other in _REGISTRY.values():
            if other.id == id and other.qualname != ex.qualname:
                raise ValueError(f"exercise id {id} used twice ({other.qualname}, {ex.qualname})")
            if other.name == ex.name and other.id != id:
                raise ValueError(f"exercise name {ex.name} used twice ({other.id}, {id})")
        _REGISTRY[id] = ex

        @functools.wraps(stub)
        def dispatch(*args, **kwargs):
            if validate is not None:
                validate(*args, **kwargs)
            if uses_reference(module):
                return reference(ex)(*args, **kwargs)
            return stub(*args, **kwargs)

        dispatch.exercise = ex
        return dispatch

    return decorate


_LOAD_ERRORS: dict[str, str] = {}  # chapter module -> why it could not be imported


def load_error(module: str) -> str | None:
    """Why ``course_lib.<module>`` cannot be imported (file, line and message of the error, which may
    lie in a module it imports), or None when it imports. A chapter module with a syntax error
    must not take the other chapters down: :func:`all_exercises` leaves it out and records why."""
    if module not in _LOAD_ERRORS:
        try:
            importlib.import_module(f"course_lib.{module}")
        except Exception as err:  # SyntaxError, ImportError, or whatever the file raises at import
            _LOAD_ERRORS[module] = describe_import_error(err)
            for key in [k for k, ex in _REGISTRY.items() if ex.module == module]:
                del _REGISTRY[key]  # declared before the line that failed: not callable either
        else:
            return None
    return _LOAD_ERRORS[module]


def describe_import_error(err: BaseException) -> str:
    """``course_lib/attention.py, line 12: SyntaxError: invalid syntax`` for an error raised while
    importing a module: the file and line where it happened (for a syntax error, where Python found
    it), then the message."""
    where = None
    if isinstance(err, SyntaxError) and err.filename:
        where = (err.filename, err.lineno)
    else:
        frames = traceback.extract_tb(err.__traceback__)
        own = [f for f in frames if "importlib" not in f.filename and "<frozen" not in f.filename]
        if own:
            where = (own[-1].filename, own[-1].lineno)
    message = f"{type(err).__name__}: {err.msg if isinstance(err, SyntaxError) else err}"
    if where is None:
        return message
    path = Path(where[0])
    package = Path(__file__).resolve().parent
    shown = f"course_lib/{path.name}" if path.resolve().parent == package else str(path)
    return f"{shown}, line {where[1]}: {message}"


def all_exercises() -> list[Exercise]:
    """Every exercise of every chapter module that imports, in id order (see :func:`load_error`)."""
    for module in CHAPTER_MODULES:
        load_error(module)
    return sorted(_REGISTRY.values(), key=lambda e: tuple(int(p) for p in e.id.split(".")))


def chapter_of(exercise_id: str) -> str:
    """The chapter module of an exercise id: ``"2.1"`` belongs to ``CHAPTER_MODULES[2]``."""
    try:
        return CHAPTER_MODULES[int(exercise_id.split(".")[0])]
    except (ValueError, IndexError):
        raise KeyError(f"no chapter for exercise id {exercise_id!r}") from None


def find(key: str) -> Exercise:
    """The exercise with id ``key`` ("0.1") or entry-point name ``key`` ("stable_softmax").

    Raises ``KeyError``; when a chapter module could not be imported, the message says so, since
    its exercises are then unknown."""
    for ex in all_exercises():
        if key in (ex.id, ex.name):
            return ex
    broken = {m: e for m in CHAPTER_MODULES if (e := load_error(m))}
    if broken:
        raise KeyError(f"no exercise with id or name {key!r}; these chapter modules could not be imported: "
                       + "; ".join(broken.values()))
    raise KeyError(f"no exercise with id or name {key!r}")


def _resolve(module: str, qualname: str) -> Callable:
    target = importlib.import_module(f"course_lib.{module}")
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def entry_point(ex: Exercise) -> Callable:
    """What tests call for ``ex`` in ``course_lib``: its dispatching callable, or its ``entry``."""
    return _resolve(ex.module, ex.entry or ex.qualname)


def stub(ex: Exercise) -> Callable:
    """The stub of ``ex`` in ``course_lib``: the body the student completes, without the dispatch."""
    return inspect.unwrap(_resolve(ex.module, ex.qualname))
