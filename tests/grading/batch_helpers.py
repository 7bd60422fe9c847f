"""Shared by the batch-grading tests: a temporary nbgrader course with Chapter 0 released, and
submissions placed as ``nbgrader collect`` would place them."""

from __future__ import annotations

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
POINTS = {e.id: e.points for e in exercises.all_exercises() if e.module == ASSIGNMENT}


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    from grading.autograde import nbgrader_env

    env = nbgrader_env(course)
    env.pop("COURSE_CHECK_DEFER", None)
    env["JUPYTER_CONFIG_DIR"] = str(course / ".jupyter")
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nbgrader {args}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def released_course(course: Path) -> Path:
    """A course folder with the assignment released (and in the gradebook); its release folder."""
    nbgrader(course, "generate_assignment", ASSIGNMENT)
    return course / "release" / ASSIGNMENT


def submit(course: Path, student: str, module: str | None, notebook: dict | None = None) -> Path:
    """Place a submission: ``module`` as numerics.py (None: no module at all), ``notebook`` (default:
    the released notebook) as numerics.ipynb."""
    release = course / "release" / ASSIGNMENT
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    if notebook is None:
        shutil.copy(release / f"{ASSIGNMENT}.ipynb", folder)
    else:
        (folder / f"{ASSIGNMENT}.ipynb").write_text(json.dumps(notebook))
    if module is not None:
        (folder / f"{ASSIGNMENT}.py").write_text(module)
    (folder / "timestamp.txt").write_text("2026-11-26 12:00:00.000000 UTC")
    return folder


def released_notebook(course: Path) -> dict:
    return json.loads((course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())


def gradebook_scores(course: Path, students) -> dict[str, dict[str, tuple]]:
    """student -> grade cell -> (auto_score, manual_score)."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "llm-course") as gb:
        for student in students:
            sub = gb.find_submission(ASSIGNMENT, student)
            out[student] = {g.name: (g.auto_score, g.manual_score) for nb in sub.notebooks for g in nb.grades}
    return out


def sandbox_processes() -> list[int]:
    """Processes that run as a sandbox uid right now (there should be none between runs)."""
    base = int(os.environ.get(sandbox.UID_BASE_ENV) or 61000)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = int(next(l for l in (entry / "status").read_text().splitlines() if l.startswith("Uid:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            if base <= uid < base + sandbox.UID_SLOTS:
                found.append(int(entry.name))
    return found


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(header), "-+-".join("-" * w for w in widths), *map(fmt, rows)])
