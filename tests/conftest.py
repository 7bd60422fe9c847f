"""The course's graded tests. Fixtures and options come from :mod:`grading.pytest_plugin`.

Under pytest-xdist (scripts/test.sh runs the solution pass with ``-n 2 --dist loadgroup``) the tests
of one file go to one worker, those of the chapter grading test one chapter per worker (its module
fixture grades one chapter), and the files with slow tests are handed out first, so that the longest
work does not start last.
"""

import os

import pytest

pytest_plugins = ["grading.pytest_plugin"]


def _xdist_group(item) -> str:
    name = item.path.relative_to(item.config.rootpath).as_posix()
    params = getattr(getattr(item, "callspec", None), "params", {})
    if item.path.name == "test_chapter_grading.py" and "graded" in params:
        name += f"-{params['graded']}"  # no ']' in a group's name: xdist's parser would not see the group
    return name


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for item in items:
            item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def slow_groups_first(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        slow = {_xdist_group(item) for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: _xdist_group(item) not in slow)  # stable: the order within a group stays
