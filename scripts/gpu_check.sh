#!/usr/bin/env bash
# GPU check, sized for one lent GPU session (15 minutes of device time in all, the machine's start
# included, so this script must end in about 8 minutes): the graded tests of every chapter, public and
# hidden, in solution mode on CUDA (the `gpu`-marked ones run there instead of being skipped), the
# benchmarks, a short run of Chapter 5's "gpu" pre-training preset with its curve, tokens/s and MFU, and
# Chapter 7's "gpu" fine-tuning preset for a few steps from that model; then a summary table. Not the grading infrastructure (sandbox, nbgrader, handout, book): it is
# CPU-only and CI runs it. The stub and wrong-variant passes check the tests themselves, which a
# device does not change: CI runs them.
#
# Runs with the machine's own python (no venv, no registry): the packages that machine lacks come as
# wheels in .gpu-wheels/, installed first into /tmp/course-site. Make them on a machine with the registry:
#   EXTRA="datasketch lm-eval evaluate more-itertools pytablewriter mbstrdecoder pathvalidate tabledata tcolorpy
#          typepy dataproperty chardet rouge-score nltk defusedxml autoawq==0.2.7.post3" bash ../shared/gpu/wheels.sh
#   python3 -m pip wheel -q --no-deps -w .gpu-wheels sqlitedict word2number   # lm-eval's two sdist-only needs
#   bash scripts/gpu_check.sh              on the GPU machine (or ./course gpu-check)
#   bash scripts/gpu_check.sh --dry-run    anywhere: what it would run, each step's time limit, and
#                                          whether every import it needs is on that machine or a wheel
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${OUT:-/tmp/gpu-check}
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1

# Test processes: 8 of the machine's 16 cores when pytest-xdist is there (it is in the image).
workers=$($PY -c 'import xdist' 2>/dev/null && echo "-n 8")
# name, time limit (s), command: the steps in order (limits add up to 8 minutes).
steps=(
  "graded-tests|270|$PY -m pytest -q -p no:cacheprovider $workers --against solution -m 'not slow' tests/test_*.py tests/hidden"
  "benchmarks|60|$PY -m benchmarks"
  "pretrain-gpu|120|env COURSE_LIB_MODE=solution $PY -m course_lib.pretraining --preset gpu --steps ${GPU_PRETRAIN_STEPS:-300} --eval-every 25 --no-progress --output $out/pretrain-gpu"
  "sft-gpu|30|env COURSE_LIB_MODE=solution $PY -m course_lib.sft --preset gpu --steps ${GPU_SFT_STEPS:-50} --base-model $out/pretrain-gpu/model --no-progress"
)

if [ $dry -eq 1 ]; then
  echo "gpu_check.sh would run, in $PWD, with PYTHONPATH=/tmp/course-site:$PWD:"
  for step in "${steps[@]}"; do IFS='|' read -r name limit cmd <<<"$step"; printf '  %-13s %4s s  %s\n' "$name" "$limit" "$cmd"; done
  # The course's venv maps imports to the distributions that provide them (./course sets it up).
  exec "${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}" scripts/gpu_imports.py --wheels .gpu-wheels
fi

if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/course-site .gpu-wheels/*.whl
  export PYTHONPATH="/tmp/course-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY - <<'PYCODE' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine (try --dry-run)"
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
PYCODE
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # the grader refuses to run as root without bubblewrap; any sandbox use here takes the older layers
  echo "no bubblewrap on this machine: sandboxed runs go without a PID namespace (COURSE_SANDBOX_BWRAP=off)"
  export COURSE_SANDBOX_BWRAP=off
fi
mkdir -p "$out"
declare -A result
for step in "${steps[@]}"; do
  IFS='|' read -r name limit cmd <<<"$step"
  t0=$SECONDS
  if timeout "$limit" bash -c "$cmd" >"$out/$name.log" 2>&1; then status=ok; else status="FAIL (exit $?)"; fi
  result[$name]="$status, $((SECONDS - t0)) s of $limit"
  echo "== $name: ${result[$name]}"; tail -n 3 "$out/$name.log"
done
cat "$out/benchmarks.log"
# The "gpu" preset's validation curve: how far the ~100M model gets on the built-in corpus (25 steps of
# 64 x 1,024 tokens are about 3 passes over it) and where it starts to overfit.
grep '^{' "$out/pretrain-gpu.log" | $PY -c 'import json, sys
r = json.loads(sys.stdin.read())
print("gpu preset: validation %.3f (unigram %.3f), %.0f tokens/s, MFU %.1f%%, %.0f s of training" % (
    r["validation_loss"], r["unigram_loss"], r["tokens_per_second"], 100 * r["mfu"], r["train_seconds"]))
print("  validation loss by step:", list(zip(r["eval_step"], [round(x, 3) for x in r["eval_loss"]])))'
# Chapter 7's "gpu" preset for 50 steps from that model: the answers' validation loss, tokens/s, and
# the validation accuracy per family.
grep '^{' "$out/sft-gpu.log" | $PY -c 'import json, sys
r = json.loads(sys.stdin.read())
print("sft gpu preset: validation loss %.3f -> %.3f, %.0f tokens/s, %.0f s of training" % (
    r["eval_loss"][0], r["eval_loss"][-1], r["tokens_per_second"], r["train_seconds"]))
print("  validation accuracy:", {f: round(a, 2) for f, a in r["validation_accuracy"].items()})'
echo; echo "GPU check summary"
for step in "${steps[@]}"; do IFS='|' read -r name _ <<<"$step"; printf '  %-13s %s\n' "$name" "${result[$name]}"; done
grep -E "passed|failed" "$out/graded-tests.log" | tail -n 1
