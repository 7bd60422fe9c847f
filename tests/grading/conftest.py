"""Fixtures shared by the grading tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.cache import building

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def release_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The student handout as the instructor makes it, ``python -m grading.release OUT`` (``./course
    release``: write, then scan), built once per test run, also when pytest-xdist spreads the run
    over several processes (the first to need it builds it, the others wait and share it): its
    folder and the command's result."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has a folder of its own under the run's
        base = base.parent
    out, result = base / "release" / "handout", base / "release" / "result.json"
    with building(result):
        if not result.is_file():
            proc = subprocess.run([sys.executable, "-m", "grading.release", str(out)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=900)
            result.write_text(json.dumps([proc.args, proc.returncode, proc.stdout, proc.stderr]))
    return out, subprocess.CompletedProcess(*json.loads(result.read_text()))


@pytest.fixture(scope="session")
def handout(release_run) -> Path:
    """The handout of :func:`release_run` (tests that change files work on a copy)."""
    out, proc = release_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out
