"""The nbgrader round trip of Chapter 0, with the repository's own nbgrader_config.py, end to end:
release, three submissions, autograde, feedback, CSV export, and the exact scores.

The submissions are made from the repository (grading.submissions), never hand-written: a correct
one, an untouched one (the released stub), and a partly wrong one (0.1 and 0.2 right, 0.3 a wrong
variant from tests/mutants/, 0.4 left a stub). nbgrader runs as the instructor would run it (its
command line, from the repository root) in a temporary course folder; kernels talk over 127.0.0.1.
Under this configuration plain ``nbgrader autograde`` runs the notebooks in the confined kernel and
scores the code in the sandbox (grading.nbgrader_autograde); the feedback shows the sandbox's results.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course_lib import exercises
from grading.submissions import module_with, solved_module
from tests.grading.batch_helpers import mutant

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = "numerics"
CHAPTER = [e for e in exercises.all_exercises() if e.module == ASSIGNMENT]
POINTS = {e.id: e.points for e in CHAPTER}


def test_committed_assignment_is_what_the_generator_writes():
    """assignments/numerics/ (the notebook alone) is in sync with course_lib and its points."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_assignment.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr



def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    """``nbgrader ARGS`` from the repository root (so its nbgrader_config.py applies), in ``course``."""
    bin_dir = str(Path(sys.executable).parent)  # nbgrader runs `alembic` and jupyter from PATH
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COURSE_", "PYTEST_", "PYTHON"))}  # no solution mode, no other gradebook
    env.update(COURSE_GRADING_DIR=str(course), PATH=bin_dir + os.pathsep + env.get("PATH", os.defpath),
               JUPYTER_CONFIG_DIR=str(course / ".jupyter"), MPLBACKEND="agg", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _text(page: str) -> str:
    """The text of an HTML page (syntax highlighting splits code into many tags)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"{proc.args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.slow
def test_release_autograde_feedback_and_export_give_the_exact_scores(tmp_path):
    course = tmp_path / "course"

    # -- release --------------------------------------------------------------------------------
    _ok(_nbgrader(course, "generate_assignment", ASSIGNMENT))
    release = course / "release" / ASSIGNMENT
    released = (release / f"{ASSIGNMENT}.ipynb").read_text()
    for secret in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "hidden=True",
                   "A NaN there does not stay put"):  # the last: a phrase of the model answer
        assert secret not in released, f"the student release contains {secret!r}"
    for ex in CHAPTER:
        assert f'check(\\"{ex.id}\\")' in released, f"the release lacks the public test cell of {ex.id}"
    # The module the student edits is the handout's course_lib/numerics.py, never a copy in the release.
    assert sorted(p.name for p in release.iterdir()) == [f"{ASSIGNMENT}.ipynb"]

    # -- three submissions, as collect would place them -------------------------------------------
    modules = {
        "correct": solved_module(ASSIGNMENT),
        "untouched": (ROOT / "course_lib" / f"{ASSIGNMENT}.py").read_text(),  # the stub as released
        "partly_wrong": module_with(ASSIGNMENT, {"0.3": mutant(ASSIGNMENT, "log_softmax_as_log_of_softmax"), "0.4": None}),
    }
    for student, source in modules.items():
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        shutil.copy(release / f"{ASSIGNMENT}.ipynb", folder)
        (folder / f"{ASSIGNMENT}.py").write_text(source)
        (folder / "timestamp.txt").write_text("2026-11-26 12:00:00.000000 UTC")

    # -- autograde, feedback, export ----------------------------------------------------------------
    _ok(_nbgrader(course, "autograde", ASSIGNMENT))
    for student, source in modules.items():  # the graded module is the student's, not the source stub
        assert (course / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.py").read_text() == source
    for student in modules:  # the experiment runs on every submission, unfinished ones included
        cells = json.loads((course / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())["cells"]
        experiment = next(c for c in cells if c["metadata"]["nbgrader"]["grade_id"] == "experiment")
        assert not [o for o in experiment["outputs"] if o["output_type"] == "error"], (student, experiment["outputs"])
        printed = "".join("".join(o.get("text", "")) for o in experiment["outputs"])
        assert ("not done yet: Exercise 0.1" in printed) == (student == "untouched"), (student, printed)
    subprocess.run(["bash", str(ROOT / "scripts" / "fetch_mathjax.sh")], check=True)  # the pages' MathJax
    _ok(_nbgrader(course, "generate_feedback", ASSIGNMENT))
    _ok(_nbgrader(course, "export", "--to", str(tmp_path / "grades.csv")))

    # -- exact scores ----------------------------------------------------------------------------
    expected = {
        "correct": dict(POINTS),
        "untouched": {ex: 0.0 for ex in POINTS},
        "partly_wrong": {ex: (POINTS[ex] if ex in ("0.1", "0.2") else 0.0) for ex in POINTS},
    }
    assert sum(expected["correct"].values()) == 10 and sum(expected["partly_wrong"].values()) == 4

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "llm-course") as gb:
        for student, per_exercise in expected.items():
            got = {ex: gb.find_grade(f"test_{ex.replace('.', '_')}", ASSIGNMENT, ASSIGNMENT, student).score
                   for ex in POINTS}
            assert got == per_exercise, f"{student}: autograded scores {got}, expected {per_exercise}"
            written = gb.find_grade("answer_masked_rows", ASSIGNMENT, ASSIGNMENT, student)
            assert written.max_score == 2 and written.auto_score in (None, 0)  # left for the human grader
            submission = gb.find_submission(ASSIGNMENT, student)
            assert submission.code_score == sum(per_exercise.values())
            assert submission.max_code_score == 10

    with open(tmp_path / "grades.csv", newline="") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    for student, per_exercise in expected.items():
        row = rows[student]
        assert row["assignment"] == ASSIGNMENT
        # The unanswered written question scores 0 until graded by hand; the code points are exact.
        assert float(row["score"]) == sum(per_exercise.values()), row
        assert float(row["max_score"]) == 12.0, row

    # -- feedback: per-exercise results, no hidden test code or lines, no CDN -------------------------
    hidden_code = [line.strip() for line in (ROOT / "tests" / "hidden" / "test_numerics_hidden.py").read_text().splitlines()
                   if "student." in line or line.strip().startswith("def ")]
    raw = {student: (course / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text() for student in expected}
    pages = {student: _text(page) for student, page in raw.items()}
    for student, page in pages.items():
        leaked = [line for line in hidden_code if line in page]
        assert not leaked, f"{student}'s feedback shows hidden test code: {leaked[:3]}"
        assert "hidden=True" not in page and "HIDDEN TESTS" not in page, f"{student}'s feedback shows the hidden-test lines"
        assert 'check("0.1")' in page  # the public call stays
        assert "cdnjs.cloudflare.com" not in raw[student] and "MathJax" in raw[student], "feedback without its own MathJax"
    assert re.search(r"exercise 0\.1 \(stable_softmax\): 0 of 2 points, 0 tests passed, [1-9]\d* failed", pages["untouched"])
    assert "NotImplementedError: Exercise 0.1" in pages["untouched"]
    assert re.search(r"exercise 0\.4 \(cross_entropy\): 4 of 4 points, \d+ tests passed, 0 failed", pages["correct"])
    assert re.search(r"exercise 0\.2 \(logsumexp\): 2 of 2 points, \d+ tests passed, 0 failed", pages["partly_wrong"])
    assert "log(softmax(x)) gives -inf once exp underflows" in pages["partly_wrong"]  # the 0.3 mistake


# -- grading.check, what a test cell calls ----------------------------------------------------------
def _run_check(folder: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` (which calls check) in a fresh interpreter in ``folder``, like a grading kernel."""
    script = ("from grading.check import check\n"
              "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) +
              "except AssertionError as err:\n    print('RAISED:', err)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", script], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)


def test_check_reports_on_stdout_only_and_raises_on_failure(tmp_path):
    (tmp_path / f"{ASSIGNMENT}.py").write_text(module_with(ASSIGNMENT, {"0.2": None}))
    proc = _run_check(tmp_path, 'check("0.1")\ncheck("0.1", hidden=True)\ncheck("0.2")')
    assert proc.stderr == ""  # nbgrader scores a test cell that writes to stderr 0
    assert re.search(r"exercise 0\.1: all \d+ tests passed", proc.stdout), proc.stdout
    assert re.search(r"exercise 0\.1 \(hidden tests\): all \d+ tests passed", proc.stdout), proc.stdout
    assert re.search(r"RAISED: exercise 0\.2: (\d+) of \1 tests failed:\n- NotImplementedError: Exercise 0\.2",
                     proc.stdout), proc.stdout


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _runner_processes(token: str) -> set[int]:
    """Live sandbox children (door_runner.py) whose copy of numerics.py holds ``token`` (other test
    runs on the same machine have children of their own)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"door_runner.py" not in (entry / "cmdline").read_bytes() or not _alive(int(entry.name)):
                    continue
                folder = Path(os.readlink(entry / "cwd")).parent
                if token in (folder / "course_lib" / f"{ASSIGNMENT}.py").read_text():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the child")
def test_check_stops_a_looping_submission_within_its_limit_and_leaves_no_process(tmp_path):
    from tests.grading.test_sandbox_door import hostile_loop

    token = f"# looping submission {tmp_path}"
    submission = tmp_path / "submission"
    submission.mkdir()
    (submission / f"{ASSIGNMENT}.py").write_text(module_with(ASSIGNMENT, {"0.1": hostile_loop}) + token + "\n")
    started = time.monotonic()
    proc = _run_check(submission, 'check("0.1", timeout=8)')
    assert time.monotonic() - started < 25
    assert proc.stderr == ""
    assert "RAISED: exercise 0.1: the tests did not finish within 8 s" in proc.stdout, proc.stdout
    deadline = time.monotonic() + 5
    while _runner_processes(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    # (the sandbox cannot write outside its own folder, so the child is found through /proc)
    assert not _runner_processes(token), "the looping sandbox child outlived check()"
