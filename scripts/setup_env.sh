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
# Up to date when pyproject.toml and this script are unchanged since the last install and the packages import from
# anywhere (an editable install made before a package folder existed maps nothing); solutions/ is
# no installed package, course_lib finds it in this repository.
want="$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] &&
   (cd / && "$OLDPWD/$VENV/bin/python" -c "import course_lib.exercises as e, grading; assert e.reference_package()" 2>/dev/null); then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and pinned: a looser request can pull a multi-GB CUDA build on a CPU machine.
"$VENV/bin/python" -m pip install -q "torch==${COURSE_TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q -e ".[book,grading,dev]"
# Chapter 11's tests compare with the GPTQ and AWQ reference code of auto-gptq and autoawq. Their packages
# require other torch and transformers versions and do not import whole here, so they come without their
# dependencies; the tests load the two modules they need (tests/test_quantization.py).
"$VENV/bin/python" -m pip install -q --no-deps "auto-gptq==0.7.1" "autoawq==0.2.7.post3"
echo "$want" > "$stamp"
