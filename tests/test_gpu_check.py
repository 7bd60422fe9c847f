"""The GPU check (scripts/gpu_check.sh) must not fail on the GPU machine for a missing package: that
machine has no registry, and a lent session has 15 minutes. Its dry run checks every import of the
GPU run against the machine's image and the wheels carried in .gpu-wheels/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What ../shared/gpu/wheels.sh downloads without EXTRA (the developers' GPU kit).
KIT = ["bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", "trl-1.16.0-py3-none-any.whl",
       "datasets-5.2.0-py3-none-any.whl", "dill-0.4.1-py3-none-any.whl",
       "multiprocess-0.70.19-py312-none-any.whl", "gguf-0.19.0-py3-none-any.whl",
       "datasketch-2.0.0-py3-none-any.whl",  # EXTRA=datasketch for wheels.sh (Chapter 6's MinHash)
       # Chapter 10's references: lm-eval and what it requires (EXTRA, and two wheels built with pip wheel)
       "lm_eval-0.4.13-py3-none-any.whl", "evaluate-0.4.6-py3-none-any.whl", "more_itertools-11.2.1-py3-none-any.whl",
       "pytablewriter-1.2.1-py3-none-any.whl", "mbstrdecoder-1.1.5-py3-none-any.whl",
       "pathvalidate-3.3.1-py3-none-any.whl", "tabledata-1.3.5-py3-none-any.whl", "tcolorpy-0.1.7-py3-none-any.whl",
       "typepy-2.0.0-py3-none-any.whl", "dataproperty-1.1.1-py3-none-any.whl",
       "chardet-7.7.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
       "rouge_score-0.0.4-py2.py3-none-any.whl", "nltk-3.10.4-py3-none-any.whl", "defusedxml-0.7.1-py2.py3-none-any.whl",
       "sqlitedict-2.1.0-py3-none-any.whl", "word2number-1.1-py3-none-any.whl",
       # Chapter 11's AWQ reference (EXTRA=autoawq; auto-gptq has no wheel for that machine's Python 3.12, so
       # the GPTQ comparisons skip there)
       "autoawq-0.2.7.post3-py3-none-any.whl"]


def gpu_imports(wheels: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_imports.py"), "--wheels", str(wheels)],
                          capture_output=True, text=True, timeout=120)


def test_every_import_of_the_gpu_run_is_on_the_gpu_machine_or_in_the_wheel_kit(tmp_path):
    for name in KIT:
        (tmp_path / name).write_bytes(b"")
    proc = gpu_imports(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dry_run_names_what_the_machine_lacks_without_wheels(tmp_path):
    proc = gpu_imports(tmp_path)
    assert proc.returncode == 1
    missing = {line.split(":")[0].strip() for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert {"datasets", "trl"} <= missing, proc.stdout


def test_the_dry_run_lists_the_steps_and_their_time_limits_within_a_gpu_session():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    limits = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("  ") and " s  " in line]
    assert [line.split()[0] for line in proc.stdout.splitlines() if " s  " in line] == [
        "graded-tests", "benchmarks", "pretrain-gpu", "sft-gpu"]
    assert sum(limits) <= 8 * 60, "a lent GPU session has 15 minutes, the machine's start included"
