#!/usr/bin/env bash
# The test command: three pytest passes that together check the code *and* the tests.
#   1. solution mode: every test passes (graded tests against the reference, plus the
#      infrastructure: sandbox door, nbgrader round trip, handout scan, built-book check);
#   2. stubs: every graded test must fail on the untouched stubs (a test that passes is named);
#   3. mutants: every wrong variant in tests/mutants/ fails at least one graded test.
# Extra arguments go to every pass (e.g. --chapter numerics). Each pass writes a JUnit report and
# its time into _build/test-reports/ (scripts/ci_summary.py prints them).
set -uo pipefail
cd "$(dirname "$0")/.."
reports=_build/test-reports
mkdir -p "$reports"
# This run's passes replace an earlier run's (other phases, such as .ci/run's book, stay).
rm -f "$reports"/{solution,stubs,mutants}.xml
[ -f "$reports/phases.tsv" ] && sed -i '/^tests: /d' "$reports/phases.tsv"
status=0
pass() {  # pass NAME TITLE PYTEST-ARGS...: pytest's exit status; a failure sets status
  local name=$1 title=$2 t0=$SECONDS rc=0; shift 2
  echo "== $title"
  python -m pytest --junitxml="$reports/$name.xml" -o junit_family=xunit2 "$@" || rc=$?
  printf 'tests: %s\t%s\n' "$name" "$((SECONDS - t0))" >> "$reports/phases.tsv"
  [ $rc -eq 0 ] || status=1
  return $rc
}
# The solution pass on $COURSE_TEST_WORKERS processes (default 2, both cores of a small machine; 0: one
# process): pytest-xdist, one test file (or class) per worker at a time (see tests/conftest.py).
workers=${COURSE_TEST_WORKERS:-2}
# One torch thread per process: the passes run two processes at a time (two workers, then stubs beside
# mutants), so more threads than that only wait for each other (an OpenMP team whose threads share two
# cores with other work spins at every barrier). Set OMP_NUM_THREADS yourself to change it.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
parallel=()
if [ "$workers" -gt 0 ] && python -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadscope --no-loadscope-reorder)
fi
pass solution "pass 1/3: solution mode, every test must pass" --against solution "${parallel[@]}" "$@"
# The stub and wrong-variant passes check the tests themselves; each is one process (a wrong variant's
# verdict is gathered over all its tests), so they run side by side, their output shown when both end.
logs=$(mktemp -d)
pass stubs "pass 2/3: untouched stubs, every graded test must fail" -q --against stubs "$@" >"$logs/stubs" 2>&1 &
stubs_pid=$!
pass mutants "pass 3/3: wrong variants, each must be caught" -q --against mutants --first-catch "$@" >"$logs/mutants" 2>&1
wait $stubs_pid || status=1
cat "$logs/stubs" "$logs/mutants"
rm -rf "$logs"
[ $status -eq 0 ] && echo "all three passes green" || echo "at least one pass failed"
exit $status
