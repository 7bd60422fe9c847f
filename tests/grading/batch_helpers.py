"""Shared by the batch-grading tests: a temporary nbgrader course with an assignment released
(Chapter 0's unless told), and submissions placed as ``nbgrader collect`` would place them."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from course_lib import exercises
from grading import sandbox

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = "numerics"
# This test run's own range of sandbox uids (inherited by the graders it starts): graders of other
# runs on the same machine use others, so "no process left" checks see this run's sandboxes only.
os.environ.setdefault(sandbox.UID_BASE_ENV, str(100_000 + sandbox.UID_SLOTS * (os.getpid() % 4000)))
POINTS = {e.id: e.points for e in exercises.all_exercises() if e.module == ASSIGNMENT}


def mutant(module: str, name: str):
    """The wrong variant ``name`` from ``tests/mutants/<module>.py``."""
    spec = importlib.util.spec_from_file_location(f"course_mutants_{module}", ROOT / "tests" / "mutants" / f"{module}.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    return getattr(variants, name)


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    from grading.autograde import nbgrader_env

    env = nbgrader_env(course)
    env.pop("COURSE_CHECK_DEFER", None)
    env["JUPYTER_CONFIG_DIR"] = str(course / ".jupyter")
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nbgrader {args}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def released_course(course: Path, assignment: str = ASSIGNMENT) -> Path:
    """A course folder with ``assignment`` released (and in the gradebook); its release folder."""
    nbgrader(course, "generate_assignment", assignment)
    return course / "release" / assignment


def submit(course: Path, student: str, module: str | None, notebook: dict | None = None,
           assignment: str = ASSIGNMENT) -> Path:
    """Place a submission of ``assignment`` (a chapter module's name): ``module`` as its .py (None: no
    module at all), ``notebook`` (default: the released notebook) as its .ipynb."""
    release = course / "release" / assignment
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True)
    if notebook is None:
        shutil.copy(release / f"{assignment}.ipynb", folder)
    else:
        (folder / f"{assignment}.ipynb").write_text(json.dumps(notebook))
    if module is not None:
        (folder / f"{assignment}.py").write_text(module)
    (folder / "timestamp.txt").write_text("2026-11-26 12:00:00.000000 UTC")
    return folder


def released_notebook(course: Path) -> dict:
    return json.loads((course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())


def gradebook_scores(course: Path, students, assignment: str = ASSIGNMENT) -> dict[str, dict[str, tuple]]:
    """student -> grade cell -> (auto_score, manual_score)."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "llm-course") as gb:
        for student in students:
            sub = gb.find_submission(assignment, student)
            out[student] = {g.name: (g.auto_score, g.manual_score) for nb in sub.notebooks for g in nb.grades}
    return out


def sandbox_processes() -> list[int]:
    """Processes left behind by sandboxes: those of a sandbox uid that no grader holds right now.
    (A uid held by another grading run on this machine, its lock file locked, is that run's: two runs
    at once must not count each other's sandboxes.)"""
    import fcntl

    base = int(os.environ.get(sandbox.UID_BASE_ENV) or 61000)
    by_uid: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = int(next(l for l in (entry / "status").read_text().splitlines() if l.startswith("Uid:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            if base <= uid < base + sandbox.UID_SLOTS:
                by_uid.setdefault(uid, []).append(int(entry.name))
    found = []
    for uid, pids in by_uid.items():
        lock_path = sandbox.sandbox_dir() / f".uid-{uid}.lock"
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # held: a sandbox of a run that is still going
            fcntl.flock(lock, fcntl.LOCK_UN)
        found += pids
    return found


@contextlib.contextmanager
def busy_machine(workers: int | None = None, seconds: float = 900.0, runnable: int | None = None):
    """Keep the machine busy on purpose while the block runs: ``workers`` processes (default two per
    core) spinning at the grader's own priority, each stopping by itself after ``seconds`` at most
    and killed when the block ends.

    With ``runnable``, the load is topped up rather than added: a spinner spins while fewer than
    ``runnable`` other tasks are runnable on the machine (``/proc/loadavg``, read every 0.2 s) and
    sleeps while other work already makes that load, so a machine kept busy by other work (a
    second test worker, a book build) is not charged for the spinners as well."""
    top_up = "" if runnable is None else (
        "    with open('/proc/loadavg') as f:\n"
        "        others = int(f.read().split()[3].split('/')[0]) - 1\n"
        f"    if others >= {int(runnable)}:\n"
        "        time.sleep(0.2)\n"
        "        continue\n")
    spin = (f"import time\nend = time.monotonic() + {float(seconds)}\nwhile time.monotonic() < end:\n{top_up}"
            "    burst = time.monotonic() + 0.2\n    while time.monotonic() < burst:\n        pass\n")
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(workers or 2 * (os.cpu_count() or 1))]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(header), "-+-".join("-" * w for w in widths), *map(fmt, rows)])
