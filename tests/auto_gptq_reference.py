"""auto-gptq 0.7.1's ``GPTQ`` (``auto_gptq/quantization/gptq.py`` with its ``quantizer.py``), loaded by
path: the package does not import on transformers 5, but these two files run on CPU (where the caller
stubs ``torch.cuda.synchronize``, which ``GPTQ.fasterquant`` calls). Shared by Chapter 11's tests and
``benchmarks/bench_quantization.py``."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

PACKAGE = "_auto_gptq_reference"
INSTALL_HINT = "pip install --no-deps auto-gptq==0.7.1"


def load_auto_gptq_gptq() -> types.ModuleType | None:
    """The module ``auto_gptq.quantization.gptq`` loaded by path (once), or ``None`` where auto-gptq is
    not installed."""
    if f"{PACKAGE}.gptq" in sys.modules:
        return sys.modules[f"{PACKAGE}.gptq"]
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "quantization"
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(folder)]
    sys.modules[PACKAGE] = package
    for name in ("quantizer", "gptq"):
        file_spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[file_spec.name] = module
        file_spec.loader.exec_module(module)
    return sys.modules[f"{PACKAGE}.gptq"]
