"""Fixtures shared by the grading tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def release_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The student handout as the instructor makes it, ``python -m grading.release OUT`` (``./course
    release``: write, then scan), built once per test run: its folder and the command's result."""
    out = tmp_path_factory.mktemp("release") / "handout"
    proc = subprocess.run([sys.executable, "-m", "grading.release", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    return out, proc


@pytest.fixture(scope="session")
def handout(release_run) -> Path:
    """The handout of :func:`release_run` (tests that change files work on a copy)."""
    out, proc = release_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out
