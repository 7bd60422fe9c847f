"""Run every benchmark (or those named) on CPU and, when present, CUDA; print a table of ratios.

    python -m benchmarks [--only numerics] [--device cpu|cuda] [--mode solution|student]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import torch

from course_lib import exercises


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="benchmark module, e.g. numerics")
    parser.add_argument("--device", action="append", default=[], help="cpu and/or cuda (default: all present)")
    parser.add_argument("--mode", choices=exercises.MODES, default=None,
                        help="time the reference (solution; the default where solutions/ exists) "
                             "or your own code (student; the default in the student handout)")
    args = parser.parse_args()
    exercises.set_mode(args.mode or ("solution" if importlib.util.find_spec("solutions") else "student"))
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    names = sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if m.name.startswith("bench_"))
    rows = []
    for name in names:
        if args.only and name not in args.only:
            continue
        bench = importlib.import_module(f"benchmarks.bench_{name}")
        for device in devices:
            rows.extend(bench.run(torch.device(device)))
    header = f"{'benchmark':<18} {'case':<12} {'device':<7} {'course ms':>10} {'library ms':>11} {'ratio':>7}  library"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.benchmark:<18} {r.case:<12} {r.device:<7} {r.course_ms:>10.3f} {r.library_ms:>11.3f} "
              f"{r.ratio:>7.2f}  {r.library}")


if __name__ == "__main__":
    main()
