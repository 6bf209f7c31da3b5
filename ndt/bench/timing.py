"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch


def best_of(
    fn: Callable[[], object],
    repeats: int = 5,
    number: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Fastest of `repeats` timings of `number` calls, in seconds per call (min filters out noise).

    `clock`: wall time by default; ``time.thread_time`` counts only this thread's CPU time, which other
    processes on a shared machine do not inflate (valid when the work runs on this one thread).
    """
    fn()  # warm-up: lazy initialisation, allocator, LAPACK workspace
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        for _ in range(number):
            fn()
        best = min(best, (clock() - t) / number)
    return best


def machine_line() -> str:
    """One line naming the machine and the software the numbers belong to."""
    cpu = platform.processor() or platform.machine()
    gpu = f", CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"machine: {platform.node()} {cpu}, {torch.get_num_threads()} torch threads{gpu}; "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )
