"""How much memory a call takes: on the CPU read from Linux (PyTorch keeps allocation statistics only on
CUDA), and the tensors autograd keeps for the backward pass, on any device.

:func:`peak_rss_increase` returns the rise of the process's peak resident memory while a function
runs. Two things make that number honest. glibc keeps freed blocks for reuse instead of returning
them to the system, which would hide the allocations of a call that follows another, so on first
use every allocation above 256 KiB is given its own mapping (returned to the system when freed);
and before each call the peak (``VmHWM``) is reset to the current resident size through
``/proc/self/clear_refs``. Where either is unavailable (not Linux, not glibc) the result is ``None``.

:func:`saved_tensor_bytes` counts the activations of a training step: the bytes of every distinct tensor
that autograd saves during a forward pass for the backward pass.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable, Iterable

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3       # mallopt parameters, from glibc's malloc.h
_OWN_MAPPING_ABOVE = 256 * 1024


@functools.lru_cache(maxsize=None)
def _glibc():
    """glibc, set up so that large blocks get their own mappings; ``None`` where it cannot be."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _OWN_MAPPING_ABOVE)
        libc.mallopt(_M_TRIM_THRESHOLD, _OWN_MAPPING_ABOVE)
        open("/proc/self/clear_refs", "w").close()
    except (OSError, AttributeError):
        return None
    return libc


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def peak_rss_increase(fn: Callable[[], object]) -> int | None:
    """Bytes by which the process's peak resident memory rose while ``fn()`` ran (its result is
    dropped before returning), or ``None`` where this cannot be measured. Other threads of the process
    count too; measure with nothing else running."""
    libc = _glibc()
    if libc is None:
        return None
    libc.malloc_trim(0)                      # hand memory that is free but still mapped back to the system
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                         # reset the peak (VmHWM) to the current resident size
    before = _status_bytes("VmRSS:")
    result = fn()
    del result
    return _status_bytes("VmHWM:") - before


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct tensors that autograd saves for the backward pass while ``fn()`` runs (a
    forward pass), each storage counted once: the activations a backward pass needs. Tensors that share
    storage with ``exclude`` (a model's parameters and buffers, an input: they exist anyway) are left out.
    ``fn``'s result is dropped before returning, and with it what was saved."""
    kept = {t.untyped_storage().data_ptr() for t in exclude}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in kept:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    del result
    return sum(saved.values())
