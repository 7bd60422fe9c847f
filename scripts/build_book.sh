#!/usr/bin/env bash
# Build the book into _build/html, offline, executing every page in solution mode.
# Any cell error or Sphinx warning fails the build (-W; allow_errors: false in _config.yml).
# Called by `./course book` with .venv on PATH; extra arguments go to `jupyter-book build`.
set -euo pipefail
cd "$(dirname "$0")/.."
export COURSE_LIB_MODE=solution
# The pages import this checkout's course_lib, whatever the venv has installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYDEVD_DISABLE_FILE_VALIDATION=1
# No progress bars from transformers/huggingface_hub: on a built page they become widgets that load
# require.js from a CDN.
export HF_HUB_DISABLE_PROGRESS_BARS=1
start=$(date +%s)
bash scripts/fetch_mathjax.sh
# The artefacts the pages share (corpus, tokenizer, the course's pretrained model) are built here, once,
# by the course's cached builders, before any page runs; with a warm cache this is a lookup.
python -m course_lib.pretraining --cached --preset cpu --no-progress
# A fresh build every time: Sphinx only re-reports the warnings of pages it re-reads.
rm -rf _build/html _build/.doctrees
status=0
jupyter-book build . --builder html --all -W -n --keep-going "$@" || status=$?
elapsed=$(( $(date +%s) - start ))
if [ $status -ne 0 ]; then
  echo "book build FAILED after ${elapsed}s (a cell error or a Sphinx warning; see above and _build/html/reports/)" >&2
  exit $status
fi
echo "book built in ${elapsed}s: _build/html/index.html"
