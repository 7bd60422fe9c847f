"""Fixtures shared by the grading tests."""

from __future__ import annotations

import pytest

from grading import release


@pytest.fixture(scope="session")
def handout(tmp_path_factory):
    """The student handout as ``./course release`` writes it (built once per test run; tests that
    change files work on a copy)."""
    out = tmp_path_factory.mktemp("release") / "handout"
    release.build_handout(out)
    return out
