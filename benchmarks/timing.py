"""Timing helpers shared by every benchmark."""

from __future__ import annotations

import time
from dataclasses import dataclass
from statistics import median
from typing import Callable

import torch


@dataclass
class Row:
    """One measured comparison: the course's code against a library, on one input."""

    benchmark: str
    case: str
    device: str
    course_ms: float
    library_ms: float
    library: str

    @property
    def ratio(self) -> float:
        return self.course_ms / self.library_ms


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call ``fn()``, synchronising CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_ms(fn: Callable[[], object], device: torch.device, *, repeats: int = 20,
               min_time_s: float = 0.05) -> float:
    """Median wall time of ``fn()`` in milliseconds, after a warm-up, synchronising CUDA."""
    seconds(fn, device)  # warm-up: allocator, kernels, caches
    times, total = [], 0.0
    while len(times) < repeats or total < min_time_s:
        times.append(seconds(fn, device))
        total += times[-1]
        if len(times) >= 10 * repeats:
            break
    return 1000 * median(times)


def interleaved_ms(first: Callable[[], object], second: Callable[[], object], device: torch.device,
                   repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``first()`` and ``second()`` timed in turns, after a warm-up of each, so
    that both see the same load on a shared machine (back-to-back runs drift by tens of percent)."""
    seconds(first, device)
    seconds(second, device)
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times):
            out.append(1000 * seconds(fn, device))
    return median(times[0]), median(times[1])


def trainer_step_timer(device: torch.device):
    """A ``transformers.TrainerCallback`` whose ``times`` collects the wall time of every optimizer step
    of a ``Trainer`` (or ``SFTTrainer``) run, synchronising CUDA at both ends."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.times.append(time.perf_counter() - self.start)

    return StepTimer()


def loop_step_timer(device: torch.device):
    """``(times, on_step)``: an ``on_step`` callback for Chapter 5's ``train_steps`` that appends to
    ``times`` the wall time of every optimizer step since the previous one (or since this call),
    synchronising CUDA first."""
    times, clock = [], [time.perf_counter()]

    def on_step(stats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - clock[0])
        clock[0] = time.perf_counter()

    return times, on_step
