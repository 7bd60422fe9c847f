"""Chapter 0: the course's stable softmax and cross-entropy against torch's fused kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.timing import Row, measure_ms
from course_lib import numerics


def run(device: torch.device) -> list[Row]:
    shapes = [(64, 4096), (16, 32000)] if device.type == "cpu" else [(256, 4096), (64, 128000)]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for batch, vocab in shapes:
        logits = (torch.randn(batch, vocab, generator=gen) * 5).to(device)
        targets = torch.randint(0, vocab, (batch,), generator=gen).to(device)
        case = f"{batch}x{vocab}"
        rows.append(Row("stable_softmax", case, str(device),
                        measure_ms(lambda: numerics.stable_softmax(logits), device),
                        measure_ms(lambda: torch.softmax(logits, dim=-1), device), "torch.softmax"))
        rows.append(Row("cross_entropy", case, str(device),
                        measure_ms(lambda: numerics.cross_entropy(logits, targets), device),
                        measure_ms(lambda: F.cross_entropy(logits, targets), device), "F.cross_entropy"))
    return rows
