"""What a test run cost: the time of each phase and the slowest tests (``.ci/run`` prints it last).

    python scripts/ci_summary.py [REPORTS]     (default _build/test-reports)

``REPORTS/phases.tsv`` holds ``phase<TAB>seconds`` lines (written by ``.ci/run`` and
``scripts/test.sh``); every ``*.xml`` there is a pytest JUnit report, whose test cases give the
slowest tests (setup and teardown included, as pytest's own ``--durations`` counts them).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def phases(folder: Path) -> list[tuple[str, float]]:
    path = folder / "phases.tsv"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, _, seconds = line.partition("\t")
        rows.append((name, float(seconds)))
    return rows


def slowest(folder: Path, n: int = 10) -> list[tuple[float, str, str]]:
    cases = []
    for report in sorted(folder.glob("*.xml")):
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            cases.append((float(case.get("time") or 0.0), report.stem, name))
    return sorted(cases, reverse=True)[:n]


def main(argv: list[str]) -> int:
    folder = Path(argv[1] if len(argv) > 1 else "_build/test-reports")
    rows = phases(folder)
    if rows:
        print("phase                          seconds")
        for name, seconds in rows:
            print(f"  {name:<28} {seconds:>7.0f}")
        print(f"  {'total':<28} {sum(s for _, s in rows):>7.0f}")
    cases = slowest(folder)
    if cases:
        print("\nslowest tests (seconds, pass, test)")
        for seconds, report, name in cases:
            print(f"  {seconds:>7.1f}  {report:<10} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
