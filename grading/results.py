"""Pytest plugin of the batch grader: each graded test's result, one JSON line as soon as it is known.

Load with ``-p grading.results --results-file PATH``. The file gets a ``collected`` line (every graded
test that will run, with its exercise id) and then one ``result`` line per test (passed only when
its setup, call and teardown all passed; the first line of the error otherwise, never a traceback,
which would show the test's code). Lines are flushed one by one, so a run that is killed still
leaves the results it reached; a test with no result line counts as failed (see
:func:`grading.autograde.score_exercises`). A test that failed because the grader could not judge it
(:class:`grading.door.GraderFault`: the sandbox did not start, the machine was too busy to time a
call) gets the outcome ``regrade`` instead: it is not the student's failure. It runs in the trusted grading process: student code never
runs in this process (it is behind the sandboxed door), so it cannot forge these lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_lib import exercises
from grading.door import GraderFault


def pytest_addoption(parser):
    parser.getgroup("course").addoption("--results-file", default=None, metavar="PATH",
                                        help="write each graded test's result to PATH as JSON lines")


def _exercise(item) -> str | None:
    marker = item.get_closest_marker("exercise")
    return exercises.find(marker.args[0]).id if marker else None


class _Writer:
    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)
        self.outcomes: dict[str, list] = {}  # nodeid -> [passed so far, first message]
        self.exercise: dict[str, str] = {}

    def line(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        graded = []
        for item in items:
            ex = _exercise(item)
            if ex is None:
                continue
            skipped = any(m.name == "skip" for m in item.iter_markers())
            self.exercise[item.nodeid] = ex
            graded.append({"nodeid": item.nodeid, "exercise": ex, "hidden": "hidden" in item.keywords,
                           "skipped": skipped})
        self.line({"collected": graded})

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if item.nodeid not in self.exercise:
            return report
        state = self.outcomes.setdefault(item.nodeid, [True, None, False, False])
        if report.skipped and call.when in ("setup", "call"):
            state[2] = True
        elif report.failed and call.excinfo is not None and call.excinfo.errisinstance(GraderFault):
            state[3] = True
            state[1] = state[1] or call.excinfo.exconly().strip().splitlines()[0][:500]
        elif report.failed:
            state[0] = False
            if state[1] is None:
                if call.excinfo is not None:
                    text = call.excinfo.exconly().strip().splitlines()
                    state[1] = (text[0] if text else call.excinfo.typename)[:500]
                else:
                    state[1] = f"failed in {call.when}"
        if call.when == "teardown":
            passed, message, skipped, fault = state
            outcome = "regrade" if fault else "skipped" if skipped and passed else "passed" if passed else "failed"
            self.line({"result": item.nodeid, "exercise": self.exercise[item.nodeid], "outcome": outcome,
                       "message": message})
        return report

    def pytest_sessionfinish(self, session, exitstatus):
        self.line({"finished": int(exitstatus)})
        self.file.close()


def pytest_configure(config):
    path = config.getoption("results_file")
    if path:
        config.pluginmanager.register(_Writer(Path(path)), "course-results-writer")
