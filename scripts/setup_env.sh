#!/usr/bin/env bash
# Create (or update) the course's virtual environment in .venv with everything the book, the
# tests and the grader need. Idempotent: a second run only checks that the install is current.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${COURSE_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.course-installed"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and pinned: a looser request can pull a multi-GB CUDA build on a CPU machine.
"$VENV/bin/python" -m pip install -q "torch==${COURSE_TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q -e ".[book,grading,dev]"
touch "$stamp"
