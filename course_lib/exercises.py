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
import inspect
import os
from dataclasses import dataclass
from typing import Callable, Iterable

MODE_ENV = "COURSE_LIB_MODE"
STUDENT_MODULES_ENV = "COURSE_LIB_STUDENT_MODULES"
MODES = ("student", "solution")

# Chapter modules in teaching order; a chapter's exercise ids start with its index here.
CHAPTER_MODULES: tuple[str, ...] = ("numerics", "tokenization", "attention", "transformer", "generation",
                                     "pretraining")


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


def reference(ex: Exercise) -> Callable:
    """The reference implementation of ``ex`` from ``solutions/<module>.py``."""
    try:
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


def all_exercises() -> list[Exercise]:
    """Every exercise of every chapter module, in id order."""
    for module in CHAPTER_MODULES:
        importlib.import_module(f"course_lib.{module}")
    return sorted(_REGISTRY.values(), key=lambda e: tuple(int(p) for p in e.id.split(".")))


def find(key: str) -> Exercise:
    """The exercise with id ``key`` ("0.1") or entry-point name ``key`` ("stable_softmax")."""
    for ex in all_exercises():
        if key in (ex.id, ex.name):
            return ex
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
