"""The one timing method of the project: warm up, then time a fixed number of iterations of
each candidate, interleaved round-robin so that a noisy neighbour slows every candidate alike.

Used by the in-process benchmark (``perf/run.py``) and by the build's accuracy gate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Untimed pause before each timed call (s): longer than any worker pool's spin-wait.
SETTLE_S = 0.02


@dataclass(frozen=True)
class Timing:
    """Latencies (ms) of ``len(samples_ms)`` timed iterations, each processing ``batch`` images."""

    batch: int
    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 99))

    @property
    def img_s(self) -> float:
        """Throughput in images per second at the median latency."""
        return self.batch / self.median_ms * 1000.0


def time_interleaved(
    steps: Sequence[Callable[[], object]], batch: int, iters: int = 20, warmup: int = 3, settle_s: float = SETTLE_S
) -> list[Timing]:
    """Time every ``step`` (one call processes ``batch`` images and returns only when the
    result is on the host, i.e. after GPU synchronisation) ``iters`` times, round-robin after
    ``warmup`` untimed calls each; one :class:`Timing` per step.

    Before each timed call the process sleeps ``settle_s`` (untimed), so that the thread pools
    of the previous step (ONNX Runtime and OpenMP workers spin-wait after a run) are idle again
    and do not take cores from the next one."""
    if iters < 1:
        raise ValueError("iters must be at least 1")
    for step in steps:
        for _ in range(warmup):
            step()
    samples: list[list[float]] = [[] for _ in steps]
    for _ in range(iters):
        for i, step in enumerate(steps):
            time.sleep(settle_s)
            start = time.perf_counter()
            step()
            samples[i].append((time.perf_counter() - start) * 1000.0)
    return [Timing(batch, tuple(s)) for s in samples]


def fixed_batch(images: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` images as one contiguous array, repeating them if there are fewer."""
    x = np.ascontiguousarray(images[:batch])
    if len(x) < batch:
        x = np.resize(x, (batch, *x.shape[1:])).astype(images.dtype)
    return x
