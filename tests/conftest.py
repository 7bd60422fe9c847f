"""The course's graded tests. Fixtures and options come from :mod:`grading.pytest_plugin`.

Under pytest-xdist (scripts/test.sh runs the solution pass with ``-n 2 --dist loadscope``) the tests
of one file, or of one class, go to one worker: the chapter grading test has a class per chapter, so
each chapter is graded once and different chapters on different workers. The files and classes
with slow tests are handed out first, so that the longest work does not start last.
"""

import os

import pytest

pytest_plugins = ["grading.pytest_plugin"]


def _scope(item) -> str:
    """What ``--dist loadscope`` keeps on one worker: the test's class, else its file."""
    return item.nodeid.rsplit("::", 1)[0]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        slow = {_scope(item) for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: _scope(item) not in slow)  # stable: the order within a scope stays
