"""Grade a whole assignment for every student: ``python -m grading.autograde ASSIGNMENT [--jobs N]``
(or ``./course grade ASSIGNMENT``), from the repository root, with the course's ``nbgrader_config.py``.

For each submission in ``<course folder>/submitted/<student>/<assignment>/``:

0. **Intake.** Every symbolic link, hard-linked file and special file in it (the student's folder
   and the assignment's folder themselves included) is moved, as it is, to
   ``<course folder>/autograde/<assignment>/quarantine/<student>/`` (:mod:`grading.intake`) before
   anything copies the submission (nbgrader's copy follows links), and listed in the record.
1. **Code exercises, in the sandbox.** The submitted chapter module(s) are copied (regular files
   only, size-capped) into a private scratch folder, and the course's graded tests of the
   assignment's exercises, public and hidden, run in a *trusted* ``pytest`` process (the course's
   configuration and plugin only, no conftest) whose only way to the student's code is the
   sandboxed door (:class:`grading.door.SandboxDoor`: a child process per submission in bubblewrap's
   namespaces, its own uid, Landlock, limits). Each test's result is written by that process
   (:mod:`grading.results`) as it finishes; an exercise earns its points when every one of its tests
   passed, and a missing result is a failure. Submissions run in parallel (``--jobs``) on CPU; on a
   GPU machine one at a time per GPU, each GPU checked free before the next.
2. **The notebook, with nbgrader.** ``nbgrader autograde --force --student=<student>`` runs each
   graded student's notebook (restoring locked cells, for the written answers and the experiment)
   in the confined kernel of :mod:`grading.kernel`, one process per student under a wall-clock
   limit: a notebook that hangs or prints undecodable bytes costs that notebook only. Its test
   cells do not run the tests: ``check()`` sees ``COURSE_CHECK_DEFER`` and fails, so nbgrader's
   provisional score of a code cell is 0, never more.
3. **Scores, by the trusted side.** The sandbox's scores are written into nbgrader's gradebook as the
   ``auto_score`` of each exercise's test cell (``test_0_1``, ...); a ``manual_score`` set by a human
   is never touched (it wins, as in nbgrader). The test cells' outputs in the autograded notebook
   are replaced by each exercise's result and messages (no test code), which is what
   ``nbgrader generate_feedback`` shows.
4. **A record** ``<course folder>/autograde/<assignment>/<student>.json`` (written last, atomically)
   marks the student done for the submission's fingerprint. A rerun skips recorded students and
   redoes the others from the start, so a crash or kill mid-run loses and duplicates nothing; a new
   submission (another fingerprint) or ``--force`` grades again.

The grader's own failures never cost a student points: a test the grader could not judge (the
sandbox did not start, the machine was too busy to time a call, processes survived a kill:
:class:`grading.door.GraderFault`) marks its exercise ``regrade``: no score in the gradebook (and
nbgrader's "needs manual grade" flag), ``regrade`` in the table, and a record that is not complete,
so the next run grades the student again (exit status 3 until then). Time limits count what a call
would take on an idle machine (:func:`grading.sandbox.charged_seconds`), so a busy machine slows
grading down without changing a score.

A progress bar runs while grading; a table of every student's scores follows.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from course_lib import exercises
from grading import check, intake, sandbox

ROOT = Path(__file__).resolve().parent.parent
COURSE_ID = "llm-course"
STARTUP_MARGIN = 180.0  # seconds the trusted pytest may take beyond the submission's time budget
MAX_NOTEBOOK_BYTES = 64 << 20
NOTEBOOK_TIMEOUT = 1800.0  # wall seconds of one student's notebook run in nbgrader, at most
_GB_LOCK = threading.Lock()


# -- where things are ------------------------------------------------------------------------------
def course_folder() -> Path:
    """nbgrader's course folder, as nbgrader_config.py sets it."""
    return Path(os.environ.get("COURSE_GRADING_DIR") or ROOT / "_grading").resolve()


def gradebook_url(course: Path) -> str:
    return os.environ.get("COURSE_GRADEBOOK_URL") or f"sqlite:///{course / 'gradebook.db'}"


def assignment_modules(assignment: str) -> list[str]:
    """Chapter modules that the assignment's students hand in: an assignment is named after its
    chapter module (``assignments/numerics/`` is Chapter 0's), and a submission carries that
    module's file beside the notebook."""
    if assignment not in exercises.CHAPTER_MODULES:
        raise SystemExit(f"{assignment!r} is not a chapter's assignment ({', '.join(exercises.CHAPTER_MODULES)})")
    return [assignment]


def assignment_exercises(modules: list[str]) -> list[exercises.Exercise]:
    return [e for e in exercises.all_exercises() if e.module in modules]


def cell_name(ex: exercises.Exercise) -> str:
    """The grade id of an exercise's autograded test cell (scripts/make_assignment.py)."""
    return f"test_{ex.id.replace('.', '_')}"


def submitted_students(course: Path, assignment: str) -> list[str]:
    return sorted(p.parent.name for p in (course / "submitted").glob(f"*/{assignment}") if p.is_dir())


def fingerprint(folder: Path, modules: list[str]) -> str:
    """Hash of what is graded: the chapter modules and the notebooks of a submission (regular files
    only: :mod:`grading.intake`)."""
    digest = hashlib.sha256()
    modules_found = [intake.submitted_module_file(folder, m) for m in modules]
    notebooks = [intake.regular_file(folder, p.name, max_bytes=MAX_NOTEBOOK_BYTES) for p in sorted(folder.glob("*.ipynb"))]
    for path, limit in [(p, intake.MAX_MODULE_BYTES) for p in modules_found] + [(p, MAX_NOTEBOOK_BYTES) for p in notebooks]:
        if path is not None:
            digest.update(path.name.encode() + b"\0" + intake.read_regular(path, limit) + b"\0")
    return digest.hexdigest()


# -- 1. code exercises in the sandbox -------------------------------------------------------------
def test_files(modules: list[str]) -> list[Path]:
    """The files that hold the graded tests of ``modules`` (``tests/test_<module>*.py`` and the
    hidden ``tests/hidden/test_<module>_hidden.py``); collecting only these saves seconds per
    submission. tests/grading/test_batch_grading.py checks that they hold every graded test."""
    return sorted({p for m in modules for p in (ROOT / "tests").rglob(f"test_{m}*.py")})


def score_exercises(lines: list[dict], chapter: list[exercises.Exercise], stopped: bool = False) -> dict[str, dict]:
    """Per exercise: points when every collected test of it passed (skipped ones aside, at least one
    passing); a test without a result is a failure. An exercise with a test the grader could not
    judge (outcome ``regrade``: :class:`grading.door.GraderFault`), with tests left without a result
    when the grader's own time limit stopped the run (``stopped``), or of a run that collected
    nothing (the trusted pytest failed before any student code ran) is marked ``regrade``: its score
    is not final."""
    collected = next((line["collected"] for line in lines if "collected" in line), None)
    results = {line["result"]: line for line in lines if "result" in line}
    scores = {}
    for ex in chapter:
        mine = [c for c in collected or [] if c["exercise"] == ex.id]
        passed = failed = 0
        messages, regrade = [], []
        for test in mine:
            got = results.get(test["nodeid"])
            if got is None and stopped:
                regrade.append("the grader's time limit stopped the run before this test (the machine was busy?)")
            elif got is None:
                failed += 1
                messages.append("a test did not finish (the run was stopped)")
            elif got["outcome"] == "regrade":
                regrade.append(got["message"] or "the grader could not judge a test")
            elif got["outcome"] == "failed":
                failed += 1
                messages.append(got["message"] or "failed")
            elif got["outcome"] == "passed":
                passed += 1
        if collected is None:  # the trusted run failed or was stopped before it ran any student code
            regrade.append("the grading run did not start" + (" before the grader's time limit" if stopped else ""))
        elif not mine:
            messages.append("no graded test of this exercise ran")
        ok = collected is not None and failed == 0 and passed > 0 and not regrade
        scores[ex.id] = {"name": ex.name, "points": ex.points, "score": ex.points if ok else 0.0,
                         "passed": passed, "failed": failed, "messages": list(dict.fromkeys(messages))[:10]}
        if regrade:
            scores[ex.id]["regrade"] = list(dict.fromkeys(regrade))[:3]
    return scores


def grade_code(submitted: Path, modules: list[str], limits: sandbox.Limits, log: Path | None = None,
               gpu: int | None = None) -> dict:
    """Run the graded tests of ``modules``' exercises against the submission in ``submitted``."""
    chapter = assignment_exercises(modules)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="course-grade-") as scratch:
        scratch = Path(scratch)  # mode 0700: the sandbox's uid cannot enter it
        snap = scratch / "submission"
        snap.mkdir()
        for module in modules:
            found = intake.submitted_module_file(submitted, module)
            if found is not None:
                (snap / f"{module}.py").write_bytes(intake.read_regular(found))
        if not any(snap.iterdir()):
            lines, status, output = [], None, ""
            missing = ", ".join(f"{m}.py" for m in modules)
            scores = score_exercises([{"collected": []}], chapter)
            for s in scores.values():
                s["messages"] = [f"{missing} is not in the submission (as a regular file)"]
            return {"exercises": scores, "seconds": 0.0, "status": "no module"}
        report = scratch / "results.jsonl"
        env = {"COURSE_SANDBOX_" + k.upper(): str(v) for k, v in limits.as_dict().items()}
        env["OMP_NUM_THREADS"] = "1"
        env["COURSE_DEVICE"] = "cuda" if gpu is not None else "cpu"
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        command = [sys.executable, "-I", "-c", check._RUNNER, str(os.getpid()), str(ROOT), *map(str, test_files(modules)),
                   *[a for ex in chapter for a in ("--exercise", ex.id)], *check.trusted_pytest_options(ROOT, snap),
                   "--call-timeout", str(limits.call_timeout), "-p", "grading.results", "--results-file", str(report),
                   "-q", "--tb=line", "-o", "addopts=", "-W", "ignore::DeprecationWarning"]
        # --tb=line: the scores and the feedback keep each failure's message only, and the log's
        # tracebacks (each one parses its test file again) cost more than the tests of a stub
        # A wall-clock safety net only: the door times the submission's calls by their own time, so
        # this limit is reached on a machine too busy to grade, and what it stops is graded again.
        limit = (limits.submission_timeout + STARTUP_MARGIN) * limits.load_factor
        status, output = check._run(command, cwd=str(scratch), limit=limit, extra_env=env)
        lines = []
        if report.is_file():
            for raw in report.read_text().splitlines():
                try:
                    lines.append(json.loads(raw))
                except json.JSONDecodeError:
                    pass
        if gpu is not None:
            sandbox.wait_gpu_free(gpu)
    if log is not None:  # the full output, for the instructor only (it may show test code)
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        log.write_text(output)
    finished = any("finished" in line for line in lines)
    scores = score_exercises(lines, chapter, stopped=status is None)
    return {"exercises": scores, "seconds": round(time.monotonic() - started, 2),
            "status": "ok" if finished else ("stopped" if status is None else f"pytest exit {status}")}


def regrade_reasons(result: dict) -> list[str]:
    """Why a grading result is not final (empty when it is)."""
    return list(dict.fromkeys(m for ex in result["exercises"].values() for m in ex.get("regrade", [])))


def probe(modules: list[str]) -> dict:
    """Start one sandbox on the untouched stub and return what confinement it got; raise
    :class:`grading.door.SandboxUnavailable` if a layer the grader requires is missing."""
    from grading.door import SandboxDoor

    with tempfile.TemporaryDirectory(prefix="course-probe-") as folder:
        for module in modules:
            shutil.copyfile(ROOT / "course_lib" / f"{module}.py", Path(folder) / f"{module}.py")
        door = SandboxDoor(folder)
        try:
            return door.start()
        finally:
            door.close()


# -- 2. the notebooks, with nbgrader ---------------------------------------------------------------
def nbgrader_env(course: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON", "COURSE_LIB_"))}
    bin_dir = str(Path(sys.executable).parent)  # nbgrader runs `alembic` and jupyter from PATH
    env.update(COURSE_GRADING_DIR=str(course), PATH=bin_dir + os.pathsep + env.get("PATH", os.defpath),
               OMP_NUM_THREADS="1")
    # Figures go into the autograded notebook (and the feedback) as images: the kernel's inline
    # backend, never a GUI one or agg (which draws nothing a notebook keeps).
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env[check.DEFER_ENV] = "1"
    return env


def run_notebooks(course: Path, assignment: str, students: list[str], log: Path, confined_kernel: bool = True,
                  cell_timeout: float = 120.0, notebook_timeout: float = NOTEBOOK_TIMEOUT) -> dict[str, str]:
    """``nbgrader autograde --force`` for each of ``students`` in turn (one process per student, whose
    command line names that student only); per student "ok" or what went wrong. A notebook that
    fails, prints undecodable bytes or runs past ``notebook_timeout`` seconds costs that notebook,
    never the others. ``confined_kernel``: run the notebooks in the :mod:`grading.kernel` kernel."""
    from grading import kernel

    # The test cells return at once (COURSE_CHECK_DEFER), so a cell that runs long is the student's
    # code hanging the kernel: a short cell limit keeps one notebook from stalling the batch.
    env = nbgrader_env(course)
    status = {}
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix="course-jupyter-") as jupyter, _GB_LOCK:
        options = [f"--Execute.timeout={int(cell_timeout)}"]
        if confined_kernel:
            kernel.write_kernelspec(Path(jupyter))
            env["JUPYTER_PATH"] = os.pathsep.join([jupyter, *filter(None, [env.get("JUPYTER_PATH")])])
            options.append(f"--Execute.kernel_name={kernel.KERNEL_NAME}")
        for student in students:
            command = [sys.executable, "-m", "nbgrader", "autograde", assignment, "--force", f"--student={student}",
                       *options]
            code, output = check._run(command, cwd=str(ROOT), limit=notebook_timeout,
                                      extra_env={**env, "TMPDIR": jupyter})
            swept = sandbox.sweep() if sandbox.privileged() else {}  # what a killed kernel left running
            with open(log, "a") as f:
                f.write(f"$ {' '.join(command)}\nexit {code}\n{output}\n")
            notebooks = list((course / "autograded" / student / assignment).glob("*.ipynb"))
            if code is None:
                status[student] = f"failed (the notebook ran past {notebook_timeout:g} s)"
            else:
                status[student] = "ok" if notebooks else "failed (no autograded notebook; see the log)"
            if any(v != "killed" for v in swept.values()):
                print(f"warning: sandbox processes survive SIGKILL: {swept}", file=sys.stderr)
    return status


# -- 3. scores into the gradebook, results into the feedback --------------------------------------
def write_scores(url: str, assignment: str, student: str, scores: dict[str, dict],
                 chapter: list[exercises.Exercise]) -> None:
    """Set the ``auto_score`` of each exercise's test cell; leave ``manual_score`` alone. An exercise
    marked ``regrade`` gets no score (None) and nbgrader's "needs manual grade" flag until a later
    run judges it."""
    from nbgrader.api import Gradebook, MissingEntry

    by_cell = {cell_name(ex): ex.id for ex in chapter}
    with _GB_LOCK, Gradebook(url, course_id=COURSE_ID) as gb:
        gb.update_or_create_student(student)
        try:
            gb.find_submission(assignment, student)
        except MissingEntry:  # nbgrader could not run the notebook: the code scores still count
            gb.add_submission(assignment, student)
        for notebook in gb.find_assignment(assignment).notebooks:
            for cell in notebook.grade_cells:
                if cell.name not in by_cell:
                    continue
                grade = gb.find_grade(cell.name, notebook.name, assignment, student)
                result = scores[by_cell[cell.name]]
                if result.get("regrade"):  # not judged: no score, and flagged in the formgrader
                    grade.auto_score, grade.needs_manual_grade = None, True
                    continue
                grade.auto_score = min(float(result["score"]), float(cell.max_score))
                grade.needs_manual_grade = grade.manual_score is not None
        gb.db.commit()


def feedback_text(ex_id: str, result: dict) -> str:
    if result.get("regrade"):
        return (f"exercise {ex_id} ({result['name']}): not graded yet: the grader could not judge it "
                f"({result['regrade'][0]}); it will be graded again\n")
    head = (f"exercise {ex_id} ({result['name']}): {result['score']:g} of {result['points']:g} points, "
            f"{result['passed']} tests passed, {result['failed']} failed")
    lines = [head] + [f"- {m}" for m in result["messages"]]
    return "\n".join(lines) + "\n"


def set_feedback_outputs(nb, scores: dict[str, dict], chapter: list[exercises.Exercise]) -> None:
    """Replace the outputs of each exercise's test cell in ``nb`` (an nbformat notebook) with the
    trusted result."""
    import nbformat

    by_cell = {cell_name(ex): ex.id for ex in chapter}
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and grade_id in by_cell:
            ex_id = by_cell[grade_id]
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=feedback_text(ex_id, scores[ex_id]))]


def write_feedback_outputs(notebook: Path, scores: dict[str, dict], chapter: list[exercises.Exercise]) -> None:
    """:func:`set_feedback_outputs` on the autograded notebook file ``notebook``."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    set_feedback_outputs(nb, scores, chapter)
    tmp = notebook.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, notebook)


def _write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)


# -- the whole assignment ----------------------------------------------------------------------------
def grade_assignment(assignment: str, *, jobs: int = 2, students: list[str] | None = None, force: bool = False,
                     notebooks: bool = True, limits: sandbox.Limits | None = None, course: Path | None = None,
                     url: str | None = None, progress: bool = True, cell_timeout: float = 120.0,
                     notebook_timeout: float = NOTEBOOK_TIMEOUT, out=sys.stdout) -> dict[str, dict]:
    """Grade ``assignment`` for ``students`` (default: everyone who submitted); return the records. A
    student whose result the grader could not judge gets a record that is not ``complete`` (graded
    again by the next run) and no score for the exercises concerned."""
    from tqdm import tqdm

    course = Path(course or course_folder()).resolve()
    url = url or gradebook_url(course)
    limits = limits or sandbox.Limits.from_env()
    modules = assignment_modules(assignment)
    chapter = assignment_exercises(modules)
    everyone = submitted_students(course, assignment)
    chosen = [s for s in (students or everyone) if s in everyone]
    store = course / "autograde" / assignment
    records, pending, prints = {}, [], {}
    for student in chosen:
        prints[student] = fingerprint(course / "submitted" / student / assignment, modules)
        try:
            old = json.loads((store / f"{student}.json").read_text())
        except (OSError, ValueError):
            old = None
        if not force and old and old.get("complete") and old.get("fingerprint") == prints[student]:
            records[student] = old
        else:
            pending.append(student)

    if pending and sandbox.privileged():
        sandbox.sweep()  # what an earlier, killed run left
    confinement = probe(modules) if pending else None  # refuses to go on half confined
    # The notebooks' kernel is confined by bubblewrap or Landlock (or the grader is no root anyway).
    confined_kernel = (not sandbox.privileged() or sandbox.bwrap_executable() is not None
                       or sandbox.landlock_abi() >= 1)
    if notebooks and pending and not confined_kernel:
        print("warning: no bubblewrap and no Landlock here: nbgrader runs the notebooks in an ordinary kernel with "
              "the grader's rights (the code scores still come from the sandbox)", file=sys.stderr)
    elif notebooks and pending and sandbox.privileged() and sandbox.bwrap_executable() is None:
        print("warning: no bubblewrap: the notebooks' kernel runs without its own PID and network namespaces "
              "(uid, Landlock and limits only)", file=sys.stderr)
    rejected = {}
    for student in pending:  # links and special files never reach a copy, nbgrader's included
        rejected[student] = intake_submission(course, student, assignment, store / "quarantine" / student)
    gpus = cuda_devices()
    slots = cf.ThreadPoolExecutor(max_workers=max(1, min(jobs, len(gpus)) if gpus else jobs))
    free_gpus = list(gpus)
    gpu_lock = threading.Condition()

    def one(student: str) -> dict:
        gpu = None
        if gpus:
            with gpu_lock:
                gpu_lock.wait_for(lambda: free_gpus)
                gpu = free_gpus.pop(0)
        try:
            return grade_code(course / "submitted" / student / assignment, modules, limits,
                              log=store / "logs" / f"{student}.log", gpu=gpu)
        finally:
            if gpu is not None:
                with gpu_lock:
                    free_gpus.append(gpu)
                    gpu_lock.notify()

    bar = tqdm(total=len(pending), desc=f"grading {assignment}", unit="student", disable=not progress,
               file=sys.stderr)
    started = time.monotonic()
    futures = {slots.submit(one, s): s for s in pending}
    waiting = set(futures)
    try:
        while waiting:
            done, waiting = cf.wait(waiting, return_when=cf.FIRST_COMPLETED)
            batch = {futures[f]: f.result() for f in done}
            status = (run_notebooks(course, assignment, sorted(batch), store / "logs" / "nbgrader.log",
                                    confined_kernel=confined_kernel, cell_timeout=cell_timeout,
                                    notebook_timeout=notebook_timeout)
                      if notebooks else {s: "not run" for s in batch})
            for student, result in sorted(batch.items()):
                write_scores(url, assignment, student, result["exercises"], chapter)
                for notebook in (course / "autograded" / student / assignment).glob("*.ipynb"):
                    write_feedback_outputs(notebook, result["exercises"], chapter)
                regrade = regrade_reasons(result)
                record = {"student": student, "assignment": assignment, "fingerprint": prints[student],
                          "exercises": result["exercises"], "notebook": status[student],
                          "status": f"regrade: {regrade[0]}" if regrade else result["status"],
                          "seconds": result["seconds"], "rejected": rejected[student],
                          "code_score": sum(e["score"] for e in result["exercises"].values()),
                          "max_code_score": sum(ex.points for ex in chapter),
                          "confinement": confinement, "complete": not regrade}
                _write_record(store / f"{student}.json", record)
                records[student] = record
                bar.update(1)
    finally:
        slots.shutdown(wait=True, cancel_futures=True)
        bar.close()
    elapsed = time.monotonic() - started
    print_summary(records, chapter, pending, elapsed, confinement, out=out)
    return records


def intake_submission(course: Path, student: str, assignment: str, quarantine: Path) -> list[str]:
    """Move every link, hard-linked file and special file of a student's submission of
    ``assignment`` (the student's folder and the assignment's folder themselves included) into
    ``quarantine`` (:func:`grading.intake.quarantine`); return what was moved, relative to the
    assignment's folder."""
    student_dir = course / "submitted" / student
    if student_dir.is_symlink():  # the student's whole folder is someone else's: nothing below is read
        return [f"../{m}" for m in intake.quarantine(student_dir, quarantine)]
    return intake.quarantine(student_dir / assignment, quarantine / assignment)


def cuda_devices() -> list[int]:
    """Indices of the CUDA devices here (none without CUDA)."""
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def print_summary(records: dict[str, dict], chapter: list[exercises.Exercise], graded_now: list[str],
                  elapsed: float, confinement: dict | None, out=sys.stdout) -> None:
    """The table of every student's scores; an exercise the grader could not judge shows as
    ``regrade`` (no score), and a closing line names the students to grade again."""
    ids = [ex.id for ex in chapter]
    header = ["student", *ids, "code", "notebook", "seconds"]
    rows = []
    for student in sorted(records):
        r = records[student]
        cells = ["regrade" if r["exercises"][i].get("regrade") else f"{r['exercises'][i]['score']:g}" for i in ids]
        code = f"{r['code_score']:g}/{r['max_code_score']:g}" + ("" if r.get("complete", True) else " (not final)")
        rows.append([student, *cells, code, r["notebook"].split(" (")[0],
                     f"{r['seconds']:.1f}" + ("" if student in graded_now else " (earlier)")])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(header), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for row in rows:
        print(line(row), file=out)
    if graded_now:
        per = [records[s]["seconds"] for s in graded_now if s in records]
        print(f"\n{len(graded_now)} graded now in {elapsed:.0f} s ({elapsed / len(graded_now):.1f} s per "
              f"submission overall; sandboxed tests {sum(per) / max(len(per), 1):.1f} s each on average); "
              f"{len(records) - len(graded_now)} unchanged since an earlier run", file=out)
    again = sorted(s for s, r in records.items() if not r.get("complete", True))
    if again:
        print(f"REGRADE {len(again)}: {', '.join(again)}: the grader could not judge some of their tests (see "
              f"'status' in their records); no score was recorded for those exercises. Run the same command "
              f"again (on a quieter machine) to grade them.", file=out)
    rejected = {s: r["rejected"] for s, r in records.items() if r.get("rejected") and s in graded_now}
    if rejected:
        print("links and special files set aside (not graded, not copied): "
              + "; ".join(f"{s}: {', '.join(v)}" for s, v in sorted(rejected.items())), file=out)
    if confinement:
        print(f"sandbox: {json.dumps(confinement)}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading.autograde", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("assignment")
    parser.add_argument("--jobs", "-j", type=int, default=2, help="submissions graded at once on CPU (default 2)")
    parser.add_argument("--student", action="append", default=None, help="only this student (repeatable)")
    parser.add_argument("--force", action="store_true", help="grade again students already recorded")
    parser.add_argument("--no-notebooks", action="store_true", help="only the code exercises (no nbgrader autograde)")
    parser.add_argument("--call-timeout", type=float, default=None, help="seconds of one call into a submission")
    parser.add_argument("--submission-timeout", type=float, default=None, help="seconds of all calls of one submission")
    parser.add_argument("--memory-gb", type=float, default=None, help="memory of one submission's processes")
    parser.add_argument("--cell-timeout", type=float, default=120.0, help="seconds of one notebook cell (default 120)")
    parser.add_argument("--notebook-timeout", type=float, default=NOTEBOOK_TIMEOUT,
                        help=f"seconds of one student's notebook run (default {NOTEBOOK_TIMEOUT:g})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    limits = sandbox.Limits.from_env(
        call_timeout=args.call_timeout, submission_timeout=args.submission_timeout,
        memory_bytes=int(args.memory_gb * 2**30) if args.memory_gb else None)
    from grading.door import GraderFault

    try:
        records = grade_assignment(args.assignment, jobs=args.jobs, students=args.student, force=args.force,
                                   notebooks=not args.no_notebooks, limits=limits, progress=not args.no_progress,
                                   cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout)
    except GraderFault as err:  # e.g. no bubblewrap: refuse to grade half confined
        print(f"not grading: {err}", file=sys.stderr)
        return 2
    return 3 if any(not r.get("complete", True) for r in records.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
