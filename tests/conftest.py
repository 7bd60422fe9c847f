"""The course's graded tests. Fixtures and options come from :mod:`grading.pytest_plugin`."""

pytest_plugins = ["grading.pytest_plugin"]
