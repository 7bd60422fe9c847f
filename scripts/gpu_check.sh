#!/usr/bin/env bash
# GPU check: the whole test suite in solution mode on CUDA, the stub pass, and the benchmarks, with a
# short table at the end. Meant for a CUDA machine that has torch, transformers, peft and accelerate
# but may lack the rest: wheels in .gpu-wheels/ (made by ../shared/gpu/wheels.sh) are installed first.
#   bash scripts/gpu_check.sh            (or ./course gpu-check on a machine with the venv)
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/course-site .gpu-wheels/*.whl
  export PYTHONPATH="/tmp/course-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY=${PYTHON:-python3}
$PY - <<'PYCODE'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
PYCODE
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # the grader refuses to run as root without bubblewrap; here the sandbox tests use the older layers
  echo "no bubblewrap on this machine: sandbox tests run without a PID namespace (COURSE_SANDBOX_BWRAP=off)"
  export COURSE_SANDBOX_BWRAP=off
fi
out=${OUT:-/tmp/gpu-check}; mkdir -p "$out"
declare -A result
run() { local name=$1; shift; local t0=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then result[$name]="ok   $((SECONDS - t0)) s"; else result[$name]="FAIL $((SECONDS - t0)) s"; fi
  tail -n 3 "$out/$name.log"; }
run solution-pass $PY -m pytest -q -p no:cacheprovider --against solution -m "not slow"
run stub-pass     $PY -m pytest -q -p no:cacheprovider --against stubs
run mutant-pass   $PY -m pytest -q -p no:cacheprovider --against mutants
run benchmarks    $PY -m benchmarks
cat "$out/benchmarks.log"
# Chapter 5's "gpu" preset (the reference loop), shortened to GPU_PRETRAIN_STEPS steps and evaluated every
# 25 (25 steps of 64 x 1,024 tokens are about 3 passes over the built-in corpus): the validation curve
# shows how far the ~100M model gets on this corpus and where it starts to overfit.
run pretrain-gpu  env COURSE_LIB_MODE=solution $PY -m course_lib.pretraining --preset gpu \
                  --steps "${GPU_PRETRAIN_STEPS:-300}" --eval-every 25 --no-progress --output "$out/pretrain-gpu"
grep '^{' "$out/pretrain-gpu.log" | $PY -c 'import json, sys
r = json.loads(sys.stdin.read())
print("gpu preset: validation %.3f (unigram %.3f), %.0f tokens/s, MFU %.1f%%, %.0f s of training" % (
    r["validation_loss"], r["unigram_loss"], r["tokens_per_second"], 100 * r["mfu"], r["train_seconds"]))
print("  validation loss by step:", list(zip(r["eval_step"], [round(x, 3) for x in r["eval_loss"]])))'
echo; echo "GPU check summary"
for k in solution-pass stub-pass mutant-pass benchmarks pretrain-gpu; do printf '  %-14s %s\n' "$k" "${result[$k]}"; done
grep -E "passed|failed|skipped" "$out/solution-pass.log" | tail -n 1
