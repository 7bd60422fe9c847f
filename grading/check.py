"""What an nbgrader autograded cell calls: ``check("0.1")`` grades one exercise of the submission.

The notebook's working directory is the submission folder (it holds the student's chapter module,
e.g. ``./numerics.py``). :func:`check` runs the course's graded tests of one exercise against it in a
fresh ``pytest`` subprocess, with the trusted course tree's tests and the sandboxed door
(``--submission``), so the student's code runs only in the door's child process. It prints a short
per-test summary to stdout (never stderr: nbgrader gives 0 to a test cell that writes to stderr) and
raises ``AssertionError`` with the failing tests' messages when any test failed. In the student
handout, where the file beside the notebook is a link to the student's own ``course_lib`` module,
the tests run on it as ``pytest --exercise`` runs them (no sandbox: it is the student's own code on
their own machine). :func:`check_hand_in` (the notebook's setup cell) keeps that file and the one
``course_lib`` module the same file.

This module imports nothing heavy (no torch) and nothing from the student's folder. It is no
defence against code that the student ran earlier in the same kernel (that code could replace
:func:`check` itself, or the hidden results it keeps between the two calls of a cell); it only keeps
the kernel's state (environment, ``sys.path``, patched modules) out of the grading run. Scores that
a hostile notebook cannot touch come from running the sandboxed tests outside the kernel
(:mod:`grading.autograde`, which sets ``COURSE_CHECK_DEFER``: then
:func:`check` runs nothing and fails, and the batch grader writes the sandbox's score and messages
into the gradebook and this cell's output afterwards).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from course_lib import exercises
from grading import intake

COURSE_ROOT_ENV = "COURSE_ROOT"
TIMEOUT_ENV = "COURSE_CHECK_TIMEOUT"
DEFER_ENV = "COURSE_CHECK_DEFER"  # set by the batch grader (grading.autograde): scores come from it
DEFAULT_TIMEOUT = 300.0  # seconds for all the tests of one exercise, subprocess included
CALL_TIMEOUT = 60.0  # seconds for one call into the submission (SandboxDoor)

# The pytest process dies with the process that started it (Linux prctl PR_SET_PDEATHSIG), so a
# killed grader or kernel leaves no grading run behind.
_RUNNER = (
    "import os, sys, ctypes, signal; ppid = int(sys.argv[1])\n"
    "try: ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "except Exception: pass\n"
    "if os.getppid() != ppid: sys.exit(70)\n"
    "sys.path.insert(0, sys.argv[2]); import pytest; sys.exit(pytest.main(sys.argv[3:]))"
)


def course_root() -> Path:
    """The trusted course tree (``tests/``, ``grading/``, ``course_lib/``): ``$COURSE_ROOT`` or the
    folder that holds this ``grading`` package."""
    return Path(os.environ.get(COURSE_ROOT_ENV) or Path(__file__).resolve().parent.parent).resolve()


def count(n: float, noun: str) -> str:
    """``count(1, "point")`` is ``"1 point"``, ``count(2.5, "point")`` is ``"2.5 points"``."""
    return f"{n:g} {noun}" + ("" if n == 1 else "s")


def check_hand_in(module, folder: str | os.PathLike | None = None) -> str:
    """Make sure that the notebook's folder hands in the student's own chapter file.

    ``module`` is the chapter module the notebook imported (``from course_lib import numerics``):
    the one file the student edits and ``pytest`` tests. ``<folder>/numerics.py`` (``folder``: the
    current one) is what a submission of the folder carries. Where it is missing it becomes a link
    to the module's file (not during batch grading); a link to that file, or a file with the same
    contents (a submission being graded), is what it should be; anything else is a second copy, and
    the warning says which file is which and how to fix it. Prints the one-line verdict and returns
    it; never raises.
    """
    name = module.__name__.rsplit(".", 1)[-1]
    own = Path(module.__file__).resolve()
    here = Path(folder if folder is not None else os.getcwd()) / f"{name}.py"
    try:
        if not here.exists() and not here.is_symlink():
            if os.environ.get(DEFER_ENV):
                verdict = f"{name}.py is not in this submission: its exercises score 0"
            else:
                here.symlink_to(own)
                verdict = f"{name}.py here is now a link to {own}, the file you edit and hand in"
        elif here.resolve() == own or here.read_bytes() == own.read_bytes():
            verdict = f"{name}.py here is your {own} (the file you hand in)"
        else:
            verdict = (f"WARNING: {name}.py in this folder is not {own}, the file that pytest and these cells use: "
                       f"the grader reads the one in this folder. Keep one file: replace this one with a link "
                       f"(ln -sf {own} {here.absolute()}) after moving your work into {own}.")
    except OSError as err:
        verdict = f"WARNING: could not check {here} ({err})"
    print(verdict)
    return verdict


def check(exercise: str, hidden: bool = False, submission: str | os.PathLike | None = None,
          timeout: float | None = None) -> None:
    """Run the graded tests of ``exercise`` (public ones, or the hidden ones with ``hidden=True``)
    against the chapter module in ``submission`` (default: the current folder).

    Prints one line per test and a summary; raises ``AssertionError`` if a test failed, none ran,
    or the run exceeded ``timeout`` seconds (default ``$COURSE_CHECK_TIMEOUT`` or 300).

    The public check runs the exercise's hidden tests too, in the same pytest process, and keeps
    their results for the hidden check that follows it in the test cell (if the submission's files
    are unchanged by then): one subprocess and one sandbox start per cell instead of two.
    """
    if os.environ.get(DEFER_ENV):
        # Batch grading: the code exercises are scored outside this kernel, in the sandbox, and
        # written into the gradebook and this cell's output by the trusted grader afterwards.
        print(f"exercise {exercise}: scored by the course's sandboxed grader (see the feedback)")
        raise AssertionError(f"exercise {exercise}: scored outside the notebook by the sandboxed grader")
    root = course_root()
    folder = Path(submission if submission is not None else os.getcwd()).absolute()
    # The student handout's layout: the file beside the notebook is a link to the student's own
    # course_lib module, on their own machine. Then the tests run on it as `pytest --exercise` does,
    # without the sandbox (which is for grading someone else's code, and costs a process start).
    module = exercises.chapter_of(exercise)
    handed_in = folder / f"{module}.py"
    own = handed_in.is_symlink() and handed_in.resolve() == (root / "course_lib" / f"{module}.py").resolve()
    folder = folder.resolve()
    limit = float(timeout if timeout is not None else os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    label = f"exercise {exercise} (hidden tests)" if hidden else f"exercise {exercise}"
    key, fingerprint = (exercise, str(root), str(folder)), _fingerprint(folder)
    kept = _HIDDEN_RESULTS.pop(key, None)
    if hidden and kept is not None and kept[0] == fingerprint:
        status, output, results, elapsed = 0, "", kept[1], kept[2]
    else:
        status, output, results, elapsed = _run_tests(root, None if own else folder, exercise,
                                                      "hidden" if hidden else None, limit)
        if not hidden:
            secret = [r for r in results if r[2]]
            if secret:
                _HIDDEN_RESULTS[key] = (fingerprint, secret, elapsed)
            results = [r for r in results if not r[2]]

    if status is None:
        print(f"{label}: stopped after {limit:g} s")
        raise AssertionError(f"{label}: the tests did not finish within {limit:g} s "
                             "(an endless loop, or a very slow solution?)")
    if not results:
        tail = "\n".join(output.strip().splitlines()[-3:])
        print(f"{label}: no test ran (pytest exit status {status})\n{tail}")
        raise AssertionError(f"{label}: no graded test ran; is the chapter module in {folder}?")
    failed = [message for _, message, _ in results if message is not None]
    for name, message, _ in results:
        print(f"  {'FAIL' if message is not None else 'ok  '}  {name}")
    if failed:
        print(f"{label}: {len(failed)} of {count(len(results), 'test')} failed ({elapsed:.0f} s)")
        distinct = list(dict.fromkeys(failed))  # one line per distinct mistake, not one per test
        raise AssertionError(f"{label}: {len(failed)} of {count(len(results), 'test')} failed:\n"
                             + "\n".join(f"- {m}" for m in distinct[:10]))
    print(f"{label}: {'its test' if len(results) == 1 else 'all ' + count(len(results), 'test')} passed")


# (exercise, course root, submission) -> (fingerprint of the submission, hidden results, seconds)
_HIDDEN_RESULTS: dict[tuple[str, str, str], tuple[str, list, float]] = {}


def _run_tests(root: Path, folder: Path | None, exercise: str, marker: str | None,
               limit: float) -> tuple[int | None, str, list[tuple[str, str | None, bool]], float]:
    """One pytest subprocess over the course's tests of ``exercise`` (``marker``: a ``-m`` filter),
    against the chapter module in ``folder`` through the sandboxed door, or (``folder`` None) against
    ``root``'s own ``course_lib`` in the test process, as ``pytest --exercise`` runs them.
    Returns (exit status or None on timeout, its output, results, seconds taken)."""
    with tempfile.TemporaryDirectory(prefix="course-check-") as scratch:
        report = Path(scratch) / "report.xml"
        door = ["--call-timeout", str(CALL_TIMEOUT)] if folder is not None else []
        args = [str(root / "tests"), "--exercise", exercise, *(["-m", marker] if marker else []),
                *trusted_pytest_options(root, folder), *door,
                "-q", "--tb=line", "--junitxml", str(report), "-o", "junit_family=xunit2"]  # messages only
        started = time.monotonic()
        status, output = _run([sys.executable, "-I", "-c", _RUNNER, str(os.getpid()), str(root), *args],
                              cwd=scratch, limit=limit)
        elapsed = time.monotonic() - started
        results = _read_report(report) if status is not None and report.is_file() else []
    return status, output, results, elapsed


def trusted_pytest_options(root: Path, submission: Path | None) -> list[str]:
    """pytest options that grade ``submission`` with the course's configuration, plugin and tests
    only: no configuration file or conftest.py of the submission's (or of any folder) is read, and
    the submission is the value of ``--submission``, never a test path. ``submission`` None: the
    tests run against ``root``'s own ``course_lib`` (the student's handout, as ``pytest --exercise``)."""
    return ["-c", str(root / "pyproject.toml"), "--rootdir", str(root), "-p", "grading.pytest_plugin",
            "--noconftest", "-p", "no:cacheprovider",
            *([f"--submission={submission}"] if submission is not None else [])]


def _fingerprint(folder: Path) -> str:
    """Hash of the Python files a submission consists of (its folder and a course_lib/ in it);
    links and special files are skipped unread."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.py"), *folder.glob("course_lib/*.py")]):
        if intake.regular_file(folder, str(path.relative_to(folder))) is not None:
            digest.update(path.name.encode() + b"\0" + intake.read_regular(path) + b"\0")
    return digest.hexdigest()


# Where and how sandboxes run on this machine (not limits, which are the grader's to set): kept.
_SANDBOX_SETTINGS = ("COURSE_SANDBOX_DIR", "COURSE_SANDBOX_UID_BASE", "COURSE_SANDBOX_BWRAP", "COURSE_SANDBOX_FS")


def _clean_environment() -> dict[str, str]:
    """The kernel's environment without what could steer the grading run: Python and pytest
    options, the course's mode switch, the sandbox's limits."""
    return {k: v for k, v in os.environ.items() if k in _SANDBOX_SETTINGS
            or not k.startswith(("PYTHON", "PYTEST", "COURSE_LIB_", "COURSE_SANDBOX_", "COV_"))}


def _run(command: list[str], cwd: str, limit: float,
         extra_env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run ``command`` in its own session; kill it and all its descendants after ``limit`` seconds.
    Returns (exit status or None on timeout, combined output)."""
    with tempfile.TemporaryFile() as out:
        # TMPDIR: the door's sandbox folders land in ``cwd`` (a scratch folder removed afterwards),
        # even when a timeout kills the run before the door could clean up.
        env = {**_clean_environment(), "TMPDIR": cwd, **(extra_env or {})}
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            status = None
        out.seek(0)
        return status, out.read().decode(errors="replace")


def _kill_tree(pid: int) -> None:
    """Kill ``pid``'s process group and those of all its descendants (the door's child runs in a
    session of its own, so killing pytest's group alone would leave it looping)."""
    groups = {pid}
    for child in _descendants(pid):
        try:
            groups.add(os.getpgid(child))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _read_report(path: Path) -> list[tuple[str, str | None, bool]]:
    """(test name, None if it passed else the one-line failure message, whether it is a hidden
    test) for every test that ran. Only the exception line is kept: the traceback would show the
    tests' code. Hidden tests are those under a ``hidden`` folder (as the pytest plugin marks them)."""
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        problem = next((c for c in case if c.tag in ("failure", "error")), None)
        if any(c.tag == "skipped" for c in case):
            continue
        name = case.get("name", "?")
        secret = "hidden" in case.get("classname", "").split(".")
        if problem is None:
            results.append((name, None, secret))
        else:
            message = (problem.get("message") or problem.tag).strip()
            results.append((name, message.splitlines()[0][:500] if message else problem.tag, secret))
    return results
