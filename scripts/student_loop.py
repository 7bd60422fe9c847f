"""How long a student waits for the tests: ``pytest --chapter X`` and ``pytest --exercise X.1`` for every
chapter, in a fresh student handout whose exercises are all completed (the student's own code, the
public tests only, a warm cache), timed one after the other. Prints a table.

    python scripts/student_loop.py [--keep DIR]

Targets (issue 15): at most 60 s per chapter, 20 s per exercise, on the 2-core machine.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import exercises  # noqa: E402
from grading import release  # noqa: E402
from grading.submissions import solved_module  # noqa: E402


def timed(python: Path, args: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the run and its children, exit status) of ``python -m pytest ARGS``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                          env=release.student_env(), capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, default=None, help="write the handout here and keep it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="course-student-loop-") as scratch:
        handout = args.keep or Path(scratch) / "handout"
        release.build_handout(handout)
        for module in exercises.CHAPTER_MODULES:
            (handout / "course_lib" / f"{module}.py").write_text(solved_module(module))
        python = release.student_python(handout, Path(scratch) / "venv")
        timed(python, ["--exercise", "0.1"], handout)  # warm: the corpus and tokenizer caches, bytecode
        print(f"{'chapter':<14} {'pytest --chapter':>22} {'pytest --exercise N.1':>26}")
        worst = 0
        for module in exercises.CHAPTER_MODULES:
            first = next(e for e in exercises.all_exercises() if e.module == module)
            chapter = timed(python, ["--chapter", module], handout)
            one = timed(python, ["--exercise", first.id], handout)
            worst |= chapter[2] | one[2]
            print(f"{module:<14} {chapter[0]:>9.1f} s ({chapter[1]:>5.1f} CPU s) {one[0]:>11.1f} s ({one[1]:>5.1f} CPU s)"
                  + ("" if chapter[2] == one[2] == 0 else "  (tests failed)"))
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
