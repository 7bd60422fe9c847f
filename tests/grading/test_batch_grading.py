"""A mixed batch of 24 submissions (correct, partial, broken, hostile) through ``python -m
grading.autograde``, killed mid-run and run again while the machine is kept busy on purpose (one
spinning process for every two cores, beside the grader's two jobs: more runnable processes than
cores): every student ends with the expected scores, once, and a manual grade set by a human survives
a forced regrade; a sandbox that cannot start charges no one (the student is marked for a regrade and
graded by the next run). Prints the summary table and the time per submission."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from grading import sandbox
from grading.autograde import grade_assignment
from grading.submissions import module_with, solved_module
from tests.grading import test_adversarial as hostile
from tests.grading.batch_helpers import (ASSIGNMENT, ROOT, busy_machine, gradebook_scores, mutant, released_course,
                                         sandbox_processes, submit)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux's")]



def _batch() -> dict[str, tuple[str | None, float]]:
    """student -> (numerics.py or None, expected code score of 10)."""
    solved = solved_module(ASSIGNMENT)
    wrong_03 = mutant(ASSIGNMENT, "log_softmax_as_log_of_softmax")
    batch = {f"correct_{i}": (solved, 10) for i in range(3)}
    # cross_entropy (0.4) calls the module's own log_softmax (0.3): a wrong 0.3 costs 0.4 too
    partial = [({"0.4": None}, 6), ({"0.3": wrong_03}, 4), ({"0.1": None, "0.2": None}, 6), ({"0.2": None}, 8),
               ({"0.3": wrong_03, "0.4": None}, 4), ({"0.1": None}, 8), ({"0.2": None, "0.4": None}, 4),
               ({"0.1": None, "0.4": None}, 4)]
    for i, (replacements, score) in enumerate(partial):
        batch[f"partial_{i}"] = (module_with(ASSIGNMENT, replacements), score)
    stub = (ROOT / "course_lib" / f"{ASSIGNMENT}.py").read_text()
    batch.update({
        "broken_stub": (stub, 0),
        "broken_syntax": (solved + "\ndef broken(:\n", 0),
        "broken_missing_function": (hostile._drop_function(solved), 8),
        "broken_signature": (hostile._swap_signature(solved), 8),
        "broken_no_module": (None, 0),
        "broken_import_error": ("import no_such_module_here\n" + solved, 0),
    })
    for name in ("endless_loop", "memory_bomb", "fork_bomb", "os_exit_zero", "patch_torch", "lying_eq", "fake_output"):
        batch[f"hostile_{name}"] = (module_with(ASSIGNMENT, {"0.1": getattr(hostile, name)}), 8)
    assert len(batch) == 24
    return batch


def _grade(course, *args, kill_after_records: int | None = None) -> subprocess.CompletedProcess | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTEST_", "PYTHON"))}
    env.update(COURSE_GRADING_DIR=str(course), COURSE_SANDBOX_UID_BASE=os.environ[sandbox.UID_BASE_ENV],
               COURSE_SANDBOX_CALL_TIMEOUT="5", COURSE_SANDBOX_EXERCISE_TIMEOUT="15",
               COURSE_SANDBOX_MEMORY_BYTES=str(3 << 29), COURSE_SANDBOX_PROCESSES="64",
               PATH=str(ROOT / ".venv" / "bin") + os.pathsep + env.get("PATH", os.defpath))
    command = [sys.executable, "-m", "grading.autograde", ASSIGNMENT, "--jobs", "2", "--no-progress", "--cell-timeout", "30", *args]
    if kill_after_records is None:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    store = course / "autograde" / ASSIGNMENT
    deadline = time.monotonic() + 600
    while len(list(store.glob("*.json"))) < kill_after_records and time.monotonic() < deadline:
        assert proc.poll() is None, "the grader ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the grader and nbgrader; pytest runs and sandboxes die with them
    proc.wait()
    return None


def test_a_mixed_batch_killed_mid_run_then_resumed(tmp_path):
    course = tmp_path / "course"
    released_course(course)
    batch = _batch()
    for student, (module, _) in batch.items():
        submit(course, student, module)
    expected = {s: score for s, (_, score) in batch.items()}

    # The code exercises only (the notebooks' nbgrader pass is in the adversarial suite and the forced
    # regrade below): the submissions are not yet in the gradebook, the grader adds them. The machine
    # is busy all along (at least three runnable tasks per two cores, the grader's own included:
    # spinners top up what other work leaves): honest students must not pay for it.
    started = time.monotonic()
    cores = os.cpu_count() or 1
    spinners = max(1, cores // 2)
    with busy_machine(workers=spinners, seconds=1500, runnable=(3 * cores) // 2):
        _grade(course, "--no-notebooks", kill_after_records=6)
        killed_at = time.monotonic() - started
        done_before = {p.stem for p in (course / "autograde" / ASSIGNMENT).glob("*.json")}
        assert 6 <= len(done_before) < len(batch)
        time.sleep(1)
        resumed = _grade(course, "--no-notebooks")
    total = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    print("\n" + resumed.stdout)
    print(f"killed after {killed_at:.0f} s with {len(done_before)} students recorded; whole batch {total:.0f} s "
          f"({total / len(batch):.1f} s per submission, 2 jobs, {os.cpu_count()} cores, {spinners} spinning processes topping the load up)")
    assert f"{len(done_before)} unchanged since an earlier run" in resumed.stdout

    records = {p.stem: json.loads(p.read_text()) for p in (course / "autograde" / ASSIGNMENT).glob("*.json")}
    assert {s: r["code_score"] for s, r in records.items()} == expected
    scores = gradebook_scores(course, expected)
    assert {s: sum(a for n, (a, m) in cells.items() if n.startswith("test_")) for s, cells in scores.items()} == expected
    assert not sandbox_processes()
    assert not list((course / "autograde" / ASSIGNMENT).glob("*.tmp"))

    from nbgrader.api import Gradebook

    url = f"sqlite:///{course / 'gradebook.db'}"
    with Gradebook(url, "llm-course") as gb:
        assert len(gb.assignment_submissions(ASSIGNMENT)) == len(batch)  # none twice
        # A human overrides one autograded cell and grades the written answer ...
        gb.find_grade("test_0_4", ASSIGNMENT, ASSIGNMENT, "partial_0").manual_score = 3.0
        gb.find_grade("answer_masked_rows", ASSIGNMENT, ASSIGNMENT, "partial_0").manual_score = 2.0
        gb.db.commit()
    # ... and a forced regrade of that student keeps both.
    again = _grade(course, "--force", "--student", "partial_0")
    assert again.returncode == 0, again.stderr[-3000:]
    with Gradebook(url, "llm-course") as gb:
        grade = gb.find_grade("test_0_4", ASSIGNMENT, ASSIGNMENT, "partial_0")
        assert (grade.auto_score, grade.manual_score, grade.score) == (0.0, 3.0, 3.0)
        assert gb.find_grade("answer_masked_rows", ASSIGNMENT, ASSIGNMENT, "partial_0").manual_score == 2.0
        assert gb.find_submission(ASSIGNMENT, "partial_0").score == 6 + 3 + 2

    # A run the grader cannot time (here: a wall-clock allowance too small for anything to finish)
    # is the grader's fault: no score is recorded, the student is marked for a regrade (record,
    # summary, nbgrader's flag), and the next run grades them.
    summary = io.StringIO()
    records = grade_assignment(ASSIGNMENT, students=["correct_0"], force=True, notebooks=False, course=course,
                               limits=sandbox.Limits(load_factor=0.001), progress=False, out=summary)
    assert "REGRADE 1: correct_0" in summary.getvalue(), summary.getvalue()
    record = json.loads((course / "autograde" / ASSIGNMENT / "correct_0.json").read_text())
    assert record == records["correct_0"] and not record["complete"] and record["status"].startswith("regrade:")
    assert all(ex["regrade"] and ex["score"] == 0 for ex in record["exercises"].values())
    with Gradebook(url, "llm-course") as gb:
        grade = gb.find_grade("test_0_1", ASSIGNMENT, ASSIGNMENT, "correct_0")
        assert (grade.auto_score, grade.needs_manual_grade) == (None, True)
    healed = _grade(course, "--no-notebooks")
    assert healed.returncode == 0 and "1 graded now" in healed.stdout, healed.stdout[-3000:]
    record = json.loads((course / "autograde" / ASSIGNMENT / "correct_0.json").read_text())
    assert record["complete"] and record["code_score"] == 10


_GRADED_ITEMS = """
import json, sys
import pytest

found = {}


class Recorder:
    def pytest_collection_modifyitems(self, items):
        for item in items:
            marker = item.get_closest_marker("exercise")
            if marker is not None:
                found[item.nodeid] = [str(item.path), marker.args[0]]


status = pytest.main(["tests", "--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[Recorder()])
print("GRADED " + json.dumps(found))
sys.exit(int(status))
"""


def test_the_graded_test_files_hold_every_graded_test_of_their_chapter():
    """The grader runs a chapter's test files only (grading.autograde.test_files): every graded test
    of the whole suite, as pytest collects it, sits in the files of its exercise's chapter."""
    from course_lib import exercises
    from grading.autograde import test_files

    out = subprocess.run([sys.executable, "-c", _GRADED_ITEMS], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    graded = json.loads(out.stdout.rsplit("GRADED ", 1)[1])
    assert {exercise for _, exercise in graded.values()} == {e.id for e in exercises.all_exercises()}
    files = {module: {str(p) for p in test_files([module])} for module in exercises.CHAPTER_MODULES}
    misplaced = [node for node, (path, exercise) in graded.items() if path not in files[exercises.chapter_of(exercise)]]
    assert not misplaced, f"graded tests outside their chapter's test files: {misplaced[:10]}"
