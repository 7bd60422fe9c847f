"""Chapter 2: the course's attention (the textbook "math" path) against torch's fused kernels.

The course's :func:`~course_lib.attention.scaled_dot_product_attention` materialises the
``(batch, heads, seq, seq)`` score matrix; ``F.scaled_dot_product_attention`` picks a fused kernel
(FlashAttention or memory-efficient attention on CUDA, a blocked kernel on CPU) that never holds it.
For causal self-attention at sequence lengths 128 to 4,096 (2,048 on CPU) each row gives the time
ratio, and the memory ratio in the library column: on CUDA the measured peak memory of one call
beyond its inputs (``torch.cuda.max_memory_allocated``); on CPU, where torch has no allocator
statistics, the score matrix that the course's path must hold (an estimate, marked ``est``).
On CUDA every backend is measured on its own (``torch.nn.attention.sdpa_kernel``); one that does not
run on the GPU at hand is left out. Two more rows compare whole layers: the course's
``MultiHeadAttention`` against ``nn.MultiheadAttention`` with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.timing import Row, measure_ms
from course_lib import attention

MIB = 2**20


@dataclass
class MemoryRow(Row):
    """A :class:`Row` that also carries peak memory in MiB (``None`` where not measured)."""

    course_mib: float | None = None
    library_mib: float | None = None
    estimated: bool = False

    @property
    def memory_ratio(self) -> float | None:
        if self.course_mib is None or not self.library_mib:
            return None
        return self.course_mib / self.library_mib


def _describe(library: str, course_mib: float | None, library_mib: float | None, estimated: bool) -> str:
    if course_mib is None:
        return library
    if estimated:
        return f"{library}; course holds a {course_mib:.1f} MiB score matrix (est)"
    ratio = course_mib / library_mib if library_mib else float("inf")
    return f"{library}; peak memory {ratio:.1f}x ({course_mib:.0f} / {library_mib:.0f} MiB)"


def peak_mib(fn, device: torch.device) -> float:
    """Peak CUDA memory of one call of ``fn`` beyond what was allocated before it, in MiB."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak / MIB


def _backends():
    from torch.nn.attention import SDPBackend

    return [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
            ("math", SDPBackend.MATH)]


def _core_rows(device: torch.device) -> list[Row]:
    cuda = device.type == "cuda"
    batch, heads, d_head = (4, 16, 64) if cuda else (1, 8, 64)
    dtype = torch.bfloat16 if cuda else torch.float32
    lengths = [128, 256, 512, 1024, 2048, 4096] if cuda else [128, 256, 512, 1024, 2048]
    gen = torch.Generator().manual_seed(0)
    rows: list[Row] = []
    for seq in lengths:
        q, k, v = (torch.randn(batch, heads, seq, d_head, generator=gen).to(device, dtype) for _ in range(3))
        repeats = 20 if seq <= 512 else 5

        def course():
            return attention.scaled_dot_product_attention(q, k, v, is_causal=True)

        course_ms = measure_ms(course, device, repeats=repeats)
        case = f"L={seq}"
        if not cuda:
            library_ms = measure_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device,
                                    repeats=repeats)
            score_mib = attention.attention_memory_bytes(batch, heads, seq, seq, dtype) / MIB
            rows.append(MemoryRow("attention", case, str(device), course_ms, library_ms,
                                  _describe("F.sdpa", score_mib, None, True), score_mib, None, True))
            continue
        from torch.nn.attention import sdpa_kernel

        course_mib = peak_mib(course, device)
        for name, backend in _backends():
            def library(backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            try:
                library()
            except RuntimeError:  # this backend does not run here (GPU generation, dtype, shape)
                continue
            library_ms = measure_ms(library, device, repeats=repeats)
            library_mib = peak_mib(library, device)
            rows.append(MemoryRow("attention", case, str(device), course_ms, library_ms,
                                  _describe(f"F.sdpa {name}", course_mib, library_mib, False), course_mib,
                                  library_mib, False))
        del q, k, v
    return rows


def _layer_rows(device: torch.device) -> list[Row]:
    cuda = device.type == "cuda"
    d_model, n_heads, batch = (1024, 16, 4) if cuda else (512, 8, 1)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
    layer = attention.MultiHeadAttention.from_torch(reference).eval().to(device, dtype)
    reference = reference.to(device, dtype)
    rows: list[Row] = []
    for seq in ([1024, 4096] if cuda else [512, 2048]):
        x = torch.randn(batch, seq, d_model, device=device, dtype=dtype)
        mask = torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1)  # torch's: True = blocked
        with torch.no_grad():
            course_ms = measure_ms(lambda: layer(x, is_causal=True), device, repeats=5)
            library_ms = measure_ms(lambda: reference(x, x, x, attn_mask=mask, is_causal=True, need_weights=False),
                                    device, repeats=5)
        rows.append(Row("mha_layer", f"L={seq}", str(device), course_ms, library_ms, "nn.MultiheadAttention"))
    return rows


def run(device: torch.device) -> list[Row]:
    with torch.no_grad():
        return _core_rows(device) + _layer_rows(device)
