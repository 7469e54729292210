"""Helpers for the benchmarks: interleaved timing and ratio tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def block(x):
    """Waits for every array in ``x``."""
    import jax

    return jax.block_until_ready(x)


def timeit(fn: Callable[[], object], repeat: int = 20, number: int = 1) -> list[float]:
    """Runs ``fn`` ``number`` times per round; returns per-call seconds per round."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            block(fn())
        times.append((time.perf_counter() - t0) / number)
    return times


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 15, number: int = 1):
    """Median seconds per call of each function, measured in alternating rounds."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(rounds):
        # alternate the order so that no function always runs right after another
        for name, fn in items if r % 2 == 0 else items[::-1]:
            samples[name] += timeit(fn, repeat=1, number=number)
    return {k: statistics.median(v) for k, v in samples.items()}


def fmt_s(s: float) -> str:
    if s < 1e-3:
        return f'{s * 1e6:.0f} us'
    if s < 1:
        return f'{s * 1e3:.2f} ms'
    return f'{s:.2f} s'
