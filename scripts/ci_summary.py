"""What a test run cost: the time of each phase and the slowest tests (``.ci/run`` prints it last).

    python scripts/ci_summary.py [REPORTS]     (default _build/test-reports)

``REPORTS/phases.tsv`` holds ``phase<TAB>seconds`` lines (written by ``.ci/run`` and
``scripts/test.sh``). Phases may overlap (the book is built while the tests run; the stub and
wrong-variant passes run side by side), so the total is the ``wall`` line where there is one, else
the sum. Every ``*.xml`` there is a pytest JUnit report, whose test cases give the slowest tests
(setup and teardown included, as pytest's own ``--durations`` counts them) and each chapter's
share of the test time.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def phases(folder: Path) -> list[tuple[str, float]]:
    path = folder / "phases.tsv"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, _, seconds = line.partition("\t")
        rows.append((name, float(seconds)))
    return rows


def slowest(folder: Path, n: int = 10) -> list[tuple[float, str, str]]:
    cases = [(seconds, report, f"{path}::{name}") for seconds, report, path, name in _cases(folder)]
    return sorted(cases, reverse=True)[:n]


def _cases(folder: Path):
    """(seconds, report name, test file, test name) of every test case of the JUnit reports in ``folder``."""
    for report in sorted(folder.glob("*.xml")):
        for case in ET.parse(report).getroot().iter("testcase"):
            parts = case.get("classname", "").split(".")
            name = case.get("name") or ""
            if parts and parts[-1][:1].isupper():  # a test class: tests.grading.test_x.TestY
                name = f"{parts.pop()}::{name}"
            yield float(case.get("time") or 0.0), report.stem, "/".join(parts) + ".py", name


def per_chapter(folder: Path) -> dict[str, dict[str, float]]:
    """Test seconds per chapter and pass: a chapter's public and hidden test files and its run of
    the chapter grading test (its class ``TestChapter_<chapter>``); the rest is the course-wide grading and book checks."""
    from course_lib.exercises import CHAPTER_MODULES

    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for seconds, report, path, name in _cases(folder):
        file = re.sub(r"_hidden$", "", Path(path).stem).removeprefix("test_")
        param = re.match(r"TestChapter_(\w+)::", name) or re.search(r"\[(\w+)\]$", name)
        if file in CHAPTER_MODULES:
            chapter = file
        elif path.endswith("test_chapter_grading.py") and param and param.group(1) in CHAPTER_MODULES:
            chapter = param.group(1)
        else:
            chapter = "(course-wide)"
        table[chapter][report] += seconds
    return table


def main(argv: list[str]) -> int:
    folder = Path(argv[1] if len(argv) > 1 else "_build/test-reports")
    rows = phases(folder)
    wall = [seconds for name, seconds in rows if name == "wall"]
    rows = [(name, seconds) for name, seconds in rows if name != "wall"]
    if rows:
        print("phase                          seconds")
        for name, seconds in rows:
            print(f"  {name:<28} {seconds:>7.0f}")
        if wall:
            print(f"  {'total (wall clock)':<28} {wall[-1]:>7.0f}")
        else:
            print(f"  {'total':<28} {sum(s for _, s in rows):>7.0f}")
    chapters = per_chapter(folder)
    if chapters:
        reports = sorted({r for row in chapters.values() for r in row})
        print("\ntest seconds per chapter (the sum of its tests' times in each pass; the solution pass runs on "
              "two workers, so this is work, not wall clock)")
        print("  " + f"{'chapter':<16}" + "".join(f"{r:>12}" for r in reports) + f"{'all':>12}")
        for chapter, row in chapters.items():
            print("  " + f"{chapter:<16}" + "".join(f"{row.get(r, 0.0):>12.0f}" for r in reports)
                  + f"{sum(row.values()):>12.0f}")
    cases = slowest(folder)
    if cases:
        print("\nslowest tests (seconds, pass, test)")
        for seconds, report, name in cases:
            print(f"  {seconds:>7.1f}  {report:<10} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
