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
# Up to date when pyproject.toml is unchanged since the last install and the packages import from
# anywhere (an editable install made before a package folder existed maps nothing); solutions/ is
# no installed package, course_lib finds it in this repository.
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] &&
   (cd / && "$OLDPWD/$VENV/bin/python" -c "import course_lib.exercises as e, grading; assert e.reference_package()" 2>/dev/null); then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and pinned: a looser request can pull a multi-GB CUDA build on a CPU machine.
"$VENV/bin/python" -m pip install -q "torch==${COURSE_TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q -e ".[book,grading,dev]"
echo "$want" > "$stamp"
