"""Pytest plugin of the course: fixtures, markers, selection, and the checks of the tests themselves.

Fixtures: ``student`` (the door to the code under test, see :mod:`grading.door`) and ``device``
(CUDA when present, else CPU; ``COURSE_DEVICE`` overrides).

Options:
  --chapter MODULE      only the tests of this chapter module (repeatable)
  --exercise ID         only the graded tests of this exercise (repeatable)
  --submission DIR      grade the chapter modules found in DIR through the sandboxed door
  --against MODE        solution: run in solution mode (all graded tests must pass);
                        stubs: every graded test must *fail* on the untouched stubs;
                        mutants: every wrong variant in tests/mutants/ must fail at least one test
  --first-catch         with --against mutants: stop running a wrong variant's tests once caught

Graded tests carry ``@pytest.mark.exercise("0.1")``; tests under ``tests/hidden/`` are marked
``hidden`` automatically (select public ones with ``-m "not hidden"``).
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from pathlib import Path

import pytest

from course_lib import exercises
from grading.door import InProcessDoor, SandboxDoor, reference_folder

AGAINST = ("solution", "stubs", "mutants")


def pytest_addoption(parser):
    group = parser.getgroup("course", "LLM course grading")
    group.addoption("--chapter", action="append", default=[], metavar="MODULE",
                    help="only tests of this chapter module (e.g. numerics); repeatable")
    group.addoption("--exercise", action="append", default=[], metavar="ID",
                    help="only graded tests of this exercise id (e.g. 0.1); repeatable")
    group.addoption("--submission", default=None, metavar="DIR",
                    help="grade the chapter modules in DIR through the sandboxed door")
    group.addoption("--call-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="time limit of one call into a submission (with --submission)")
    group.addoption("--against", choices=AGAINST, default=None,
                    help="solution: reference code; stubs: graded tests must fail on the stubs; "
                         "mutants: every wrong variant must be caught")
    group.addoption("--first-catch", action="store_true", default=False,
                    help="with --against mutants: skip a wrong variant's remaining tests once one has caught it "
                         "(the verdicts are the same, in a fraction of the time)")


def pytest_configure(config):
    against = config.getoption("against")
    if against in ("solution", "mutants"):
        exercises.set_mode("solution")
    elif against == "stubs":
        exercises.set_mode("student")
    submission = config.getoption("submission")
    if submission and against:
        raise pytest.UsageError("--submission and --against do not go together")
    if submission and reference_folder() is not None:
        # The submission runs behind the door; what the tests themselves build here (a tokenizer, a
        # model to send through the door) is the grader's own code: the reference, where there is one.
        exercises.set_mode("solution")
    config._course_door = (SandboxDoor(submission, call_timeout=config.getoption("call_timeout"))
                           if submission else InProcessDoor())
    config._course_mutants_killed = defaultdict(bool)


def pytest_unconfigure(config):
    door = getattr(config, "_course_door", None)
    if door is not None:
        door.close()


def _exercise_of(node) -> exercises.Exercise | None:
    marker = node.get_closest_marker("exercise")
    return exercises.find(marker.args[0]) if marker else None


def _mutants_for(config, ex: exercises.Exercise) -> list:
    path = Path(config.rootpath) / "tests" / "mutants" / f"{ex.module}.py"
    if not path.is_file():
        return []
    spec = importlib.util.spec_from_file_location(f"course_mutants_{ex.module}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.MUTANTS.get(ex.name, []))


def pytest_generate_tests(metafunc):
    if metafunc.config.getoption("against") != "mutants" or "student" not in metafunc.fixturenames:
        return
    ex = _exercise_of(metafunc.definition)
    if ex is None:
        return
    mutants = _mutants_for(metafunc.config, ex)
    for mutant in mutants:
        metafunc.config._course_mutants_killed.setdefault((ex.name, mutant.__name__), False)
    metafunc.parametrize("student", [(ex.name, m) for m in mutants], indirect=True,
                         ids=[m.__name__ for m in mutants])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    chapters, wanted = set(config.getoption("chapter")), set(config.getoption("exercise"))
    against = config.getoption("against")
    has_cuda = _cuda_available()
    keep, drop = [], []
    for item in items:
        if "hidden" in Path(str(item.path)).parts:
            item.add_marker("hidden")
        ex = _exercise_of(item)
        module = ex.module if ex else Path(str(item.path)).stem.removeprefix("test_").removesuffix("_hidden")
        selected = ((not chapters or module in chapters)
                    and (not wanted or (ex is not None and ex.id in wanted))
                    and (against not in ("stubs", "mutants") or ex is not None))
        (keep if selected else drop).append(item)
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)"))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if against == "mutants":  # judge only the wrong variants whose tests were selected
        selected = {(name, mutant.__name__) for item in keep if hasattr(item, "callspec")
                    for name, mutant in [item.callspec.params.get("student", (None, _NoMutant))] if name}
        killed = config._course_mutants_killed
        for key in list(killed):
            if key not in selected:
                del killed[key]


class _NoMutant:
    """Placeholder for a test that runs no wrong variant."""


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_runtest_setup(item):
    if not (item.config.getoption("first_catch") and item.config.getoption("against") == "mutants"
            and hasattr(item, "callspec")):
        return
    name, mutant = item.callspec.params.get("student", (None, _NoMutant))
    if name and item.config._course_mutants_killed.get((name, mutant.__name__)):
        pytest.skip("this wrong variant is already caught (--first-catch)")


@pytest.fixture(scope="session")
def device():
    """The device graded tests run on: CUDA when present (or ``COURSE_DEVICE``), else CPU."""
    import torch

    return torch.device(os.environ.get("COURSE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


@pytest.fixture
def student(request):
    """The door to the code under test: ``student.stable_softmax(logits)`` and so on."""
    param = getattr(request, "param", None)
    if param is not None:  # --against mutants: one entry point replaced by a wrong variant
        name, mutant = param
        return InProcessDoor(overrides={name: mutant})
    return request.config._course_door


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    against = item.config.getoption("against")
    ex = _exercise_of(item)
    if report.when != "call" or against not in ("stubs", "mutants") or ex is None:
        return report
    if against == "stubs":
        if report.passed:
            report.outcome = "failed"
            report.longrepr = (f"{item.nodeid} passes on the untouched stub of exercise {ex.id} "
                               f"({ex.name}): it asserts nothing about the student's code")
        elif call.excinfo is not None and call.excinfo.errisinstance(NotImplementedError):
            report.outcome, report.longrepr = "passed", None
        else:
            report.longrepr = (f"{item.nodeid} fails on the stub of exercise {ex.id}, but not with "
                               f"its NotImplementedError:\n{report.longrepr}")
    else:
        name, mutant = item.callspec.params["student"]
        key = (name, mutant.__name__)
        if report.failed:
            item.config._course_mutants_killed[key] = True
            report.outcome, report.longrepr = "passed", None
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.getoption("against") != "mutants":
        return
    killed = config._course_mutants_killed
    terminalreporter.section("wrong variants (mutants)")
    for (name, mutant), was_killed in sorted(killed.items()):
        terminalreporter.write_line(f"{'caught  ' if was_killed else 'SURVIVED'}  {name}: {mutant}")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if config.getoption("against") == "mutants":
        if any(not k for k in config._course_mutants_killed.values()):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
