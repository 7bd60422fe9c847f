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

The plugin loads before pytest parses its command line (a ``pytest11`` entry point and ``-p`` in
``addopts``), so ``--submission DIR`` is an option from the first pass on and DIR is never taken for
a test path, whose ``conftest.py`` pytest would import into this trusted process. With
``--submission``, a run whose test paths, configuration file or conftest files lie outside the
course tree is refused before any conftest is imported.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections import defaultdict
from pathlib import Path

import pytest

from course_lib import exercises
from grading.door import InProcessDoor, SandboxDoor, reference_folder

AGAINST = ("solution", "stubs", "mutants")
COURSE_ROOT = Path(__file__).resolve().parent.parent


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


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """With ``--submission``: refuse test paths outside the course's ``tests/``, a configuration file
    other than the course's, and any ``conftest.py`` but ``tests/conftest.py`` that pytest would
    import, before it imports one (a submission's conftest would run in the grader)."""
    options = early_config.known_args_namespace
    if not getattr(options, "submission", None):
        return
    problems = []
    if early_config.inipath is not None and early_config.inipath.resolve().parent != COURSE_ROOT:
        problems.append(f"configuration file {early_config.inipath} is not the course's")
    tests = COURSE_ROOT / "tests"
    for arg in options.file_or_dir:
        path = Path(arg.split("::")[0]).resolve()
        if path != tests and tests not in path.parents:
            problems.append(f"test path {arg} lies outside {tests}")
            continue
        if not options.noconftest:
            found = [*(path.rglob("conftest.py") if path.is_dir() else []), COURSE_ROOT / "conftest.py"]
            problems += [f"{c} is not the course's conftest" for c in found
                         if c.is_file() and c.resolve() != tests / "conftest.py"]
    if problems:
        raise pytest.UsageError("refusing to grade a submission this way: " + "; ".join(problems))


def pytest_configure(config):
    against = config.getoption("against")
    if against is None:
        # A student's run: one chapter module that does not import must not stop the others, and a
        # failure shows its message and the test's line, not the source of the assertion helpers.
        config.option.continue_on_collection_errors = True
        if config.option.tbstyle == "auto":
            config.option.tbstyle = "short"
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
    if submission or against in ("stubs", "mutants"):
        _grading_hypothesis_profile()
    config._course_door = (SandboxDoor(submission, call_timeout=config.getoption("call_timeout"))
                           if submission else InProcessDoor())
    config._course_mutants_killed = defaultdict(bool)


def _grading_hypothesis_profile() -> None:
    """Where only pass or fail counts (grading a submission, the stubs and mutants passes), a failing
    property test stops at its first failing example: Hypothesis's shrinking, which finds the
    smallest one for a student reading the failure, costs seconds per test and changes no outcome.
    Loaded before the test files are imported, so their ``settings(...)`` inherit it."""
    from hypothesis import Phase, settings

    settings.register_profile("course-grading", phases=(Phase.explicit, Phase.reuse, Phase.generate))
    settings.load_profile("course-grading")


def pytest_unconfigure(config):
    door = getattr(config, "_course_door", None)
    if door is not None:
        door.close()


def _exercise_of(node) -> exercises.Exercise | None:
    marker = node.get_closest_marker("exercise")
    if marker is None:
        return None
    try:
        return exercises.find(marker.args[0])
    except KeyError:  # its chapter module does not import: known by its id alone
        return exercises.Exercise(marker.args[0], exercises.chapter_of(marker.args[0]), "?", 0)


def _test_module(path) -> str:
    """The chapter module a test file is about: ``tests/hidden/test_attention_hidden.py`` -> attention."""
    return Path(str(path)).stem.removeprefix("test_").removesuffix("_hidden")


def _selected_modules(config) -> set[str] | None:
    """The modules ``--chapter``/``--exercise`` select, or None when they select nothing."""
    chapters, wanted = config.getoption("chapter"), config.getoption("exercise")
    if not chapters and not wanted:
        return None
    selected = set(chapters)
    for ex_id in wanted:
        try:
            selected.add(exercises.chapter_of(ex_id))
        except KeyError as err:
            raise pytest.UsageError(f"--exercise {ex_id}: {err.args[0]}") from None
    return selected


def pytest_ignore_collect(collection_path, config):
    """With ``--chapter``/``--exercise``, other chapters' test files are not even imported: faster,
    and a chapter module that does not import cannot get in the way of another chapter's tests.
    (Graded tests of exercise N.M live in the test files of chapter N: tests/grading/test_batch_grading.py.)"""
    selected = _selected_modules(config)
    if selected is None or not collection_path.is_file() or not collection_path.name.startswith("test_"):
        return None
    return True if _test_module(collection_path) not in selected else None


def _broken_chapters(modules) -> dict[str, str]:
    """Chapter modules among ``modules`` that do not import, with why (file, line, message)."""
    return {m: why for m in modules if m in exercises.CHAPTER_MODULES and (why := exercises.load_error(m))}


def pytest_report_header(config):
    selected = _selected_modules(config) or exercises.CHAPTER_MODULES
    broken = _broken_chapters(selected)
    if broken:
        return [f"course_lib/{m}.py does not import ({why}): its tests fail until that is fixed"
                for m, why in broken.items()]
    return None


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A test file that fails to import because a chapter module does not: say which file, which
    line and what, first, instead of pytest's long import traceback."""
    report = yield
    if report.failed and isinstance(collector, pytest.Module):
        broken = _broken_chapters(exercises.CHAPTER_MODULES)
        if broken:
            report.longrepr = (f"{collector.nodeid} could not be imported because a chapter module does not "
                               "import:\n" + "\n".join(f"  {why}" for why in dict.fromkeys(broken.values())))
    return report


def pytest_runtest_setup(item):
    ex = _exercise_of(item)
    if ex is not None and ex.qualname == "?":
        why = exercises.load_error(ex.module) or "its module does not import"
        pytest.fail(f"{why}\n(exercise {ex.id} cannot run until course_lib/{ex.module}.py imports)", pytrace=False)


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
        module = ex.module if ex else _test_module(item.path)
        selected = ((not chapters or module in chapters)
                    and (not wanted or (ex is not None and ex.id in wanted))
                    and (against not in ("stubs", "mutants") or ex is not None))
        (keep if selected else drop).append(item)
        if selected and ex is not None and against is None and config.option.tbstyle == "short":
            # a student's failure is formatted once, their way (pytest's own traceback, made first
            # and thrown away, parsed the test file again for every failure)
            item.repr_failure = functools.partial(_student_view, item)
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


def _student_view(item, excinfo) -> str:
    """A graded test's failure as a student reads it: the message first, then where it happened, in
    the test and in the student's code, without the frames of the assertion helpers (``grading/``,
    helper functions of the test files) and of the door."""
    tests_dir = Path(str(item.config.rootpath)) / "tests"
    grading_dir = Path(__file__).resolve().parent

    def shown(entry) -> bool:
        path = Path(str(entry.path))
        if path.is_relative_to(grading_dir) or path == Path(exercises.__file__):
            return False
        return not path.is_relative_to(tests_dir) or entry.name == getattr(item, "originalname", item.name)

    pruned = item._traceback_filter(excinfo)  # pytest's own cut: from the test function down
    kept = [entry for entry in pruned if shown(entry)]
    if kept:
        excinfo.traceback = type(excinfo.traceback)(kept)
    message = excinfo.exconly().strip()
    if excinfo.errisinstance(AssertionError) and not message.startswith("AssertionError: assert "):
        # A test's own message, then pytest's introspection of the assert expression ("assert ...",
        # "+  where ..."): the message says what is wrong; the rest names the test's variables.
        message = message.split("\nassert ", 1)[0]
    where = str(excinfo.getrepr(style="short", funcargs=False, chain=True)).rstrip().splitlines()
    while where and where[-1].startswith("E "):  # the message again: it is already first
        where.pop()
    return message + "\n\n" + "\n".join(where)


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
