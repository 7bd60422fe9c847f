#!/usr/bin/env bash
# The test command: three pytest passes that together check the code *and* the tests.
#   1. solution mode: every test passes (graded tests against the reference, plus the
#      infrastructure: sandbox door, nbgrader round trip, handout scan, built-book check);
#   2. stubs: every graded test fails on the untouched stubs (a test that passes is named);
#   3. mutants: every wrong variant in tests/mutants/ fails at least one graded test.
# Extra arguments go to every pass (e.g. --chapter numerics).
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
echo "== pass 1/3: solution mode, every test must pass"
python -m pytest --against solution "$@" || status=1
echo "== pass 2/3: untouched stubs, every graded test must fail"
python -m pytest -q --against stubs "$@" || status=1
echo "== pass 3/3: wrong variants, each must be caught"
python -m pytest -q --against mutants "$@" || status=1
[ $status -eq 0 ] && echo "all three passes green" || echo "at least one pass failed"
exit $status
