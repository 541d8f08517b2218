"""Soak: sustained load on the ensemble for a set time, checking every answer and sampling
the server's memory.

``concurrency`` asyncio workers (tritonclient's asyncio client) each send requests of
``batch`` real encoded photos back to back for ``duration_s``. Every response is checked
(shape ``[batch, C]``, finite, rows summing to 1); a failed or invalid response counts as an
error with its message. Every ``sample_s`` the resident memory (VmRSS) of tritonserver and
each of its Python-backend stubs is read from ``/proc``.

Memory verdict: the first ``warmup_fraction`` of the run is excluded (allocators and caches
fill up); over the rest, a least-squares line through the samples gives the growth in MB per
minute, and the run "holds" when the fitted growth over the measured part stays below
``max(16 MB, 2%)`` of the memory at its start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tqdm import tqdm

from wastesort.shipped import IMAGE_BYTES, PROBABILITIES

AIO = {"http": http_aio, "grpc": grpc_aio}


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


@dataclass
class SoakResult:
    """What a soak measured. Latencies in milliseconds, memory in MB, times in seconds."""

    protocol: str
    batch: int
    concurrency: int
    duration_s: float
    requests: int = 0
    images: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    memory: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    warmup_fraction: float = 0.2

    @property
    def throughput(self) -> float:
        return self.images / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def _measured(self) -> list[tuple[float, float]]:
        cut = self.duration_s * self.warmup_fraction
        return [m for m in self.memory if m[0] >= cut]

    @property
    def memory_start_mb(self) -> float:
        measured = self._measured()
        return measured[0][1] if measured else float("nan")

    @property
    def memory_end_mb(self) -> float:
        return self.memory[-1][1] if self.memory else float("nan")

    @property
    def memory_slope_mb_per_min(self) -> float:
        measured = self._measured()
        if len(measured) < 3:
            return float("nan")
        t, mb = np.array(measured).T
        return float(np.polyfit(t / 60.0, mb, 1)[0])

    @property
    def memory_growth_mb(self) -> float:
        """Fitted growth over the measured (post-warm-up) part of the run."""
        measured = self._measured()
        if len(measured) < 3:
            return float("nan")
        return self.memory_slope_mb_per_min * (measured[-1][0] - measured[0][0]) / 60.0

    @property
    def memory_holds(self) -> bool:
        growth = self.memory_growth_mb
        return bool(np.isfinite(growth) and growth < max(16.0, 0.02 * self.memory_start_mb))

    def summary(self) -> dict:
        """JSON-ready figures (no per-request latencies)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "memory")}
        out.update(
            throughput_img_s=round(self.throughput, 1),
            p50_ms=round(self.percentile(50), 1),
            p90_ms=round(self.percentile(90), 1),
            p99_ms=round(self.percentile(99), 1),
            max_ms=round(max(self.latencies_ms, default=float("nan")), 1),
            memory_start_mb=round(self.memory_start_mb, 1),
            memory_end_mb=round(self.memory_end_mb, 1),
            memory_growth_mb=round(self.memory_growth_mb, 1),
            memory_slope_mb_per_min=round(self.memory_slope_mb_per_min, 2),
            memory_holds=self.memory_holds,
            memory_samples=[[round(t, 1), round(mb, 1)] for t, mb in self.memory],
        )
        return out


def _check(result: object, batch: int) -> str | None:
    probs = result.as_numpy(PROBABILITIES)  # type: ignore[attr-defined]
    if probs is None or probs.shape[0] != batch:
        return f"wrong output shape {None if probs is None else probs.shape}"
    if not np.isfinite(probs).all() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        return "invalid probabilities"
    return None


async def _soak(
    url: str,
    protocol: str,
    model: str,
    payloads: list[bytes],
    batch: int,
    concurrency: int,
    duration_s: float,
    server_pids: Callable[[], list[int]],
    sample_s: float,
    timeout_s: float,
    progress: bool,
) -> SoakResult:
    module = AIO[protocol]
    client = module.InferenceServerClient(url)
    result = SoakResult(protocol, batch, concurrency, duration_s)
    start = time.monotonic()
    stop_at = start + duration_s
    bar = tqdm(total=int(duration_s), unit="s", desc=f"soak {protocol} b{batch} c{concurrency}", disable=not progress, leave=False)

    def batch_input(k: int) -> object:
        items = np.empty((batch, 1), dtype=np.object_)
        for i in range(batch):
            items[i, 0] = payloads[(k * batch + i) % len(payloads)]
        tensor = module.InferInput(IMAGE_BYTES, [batch, 1], "BYTES")
        tensor.set_data_from_numpy(items)
        return tensor

    async def worker(w: int) -> None:
        k = w
        while time.monotonic() < stop_at:
            tensor = batch_input(k)
            k += concurrency
            t0 = time.perf_counter()
            try:
                answer = await asyncio.wait_for(client.infer(model, [tensor]), timeout_s)
                problem = _check(answer, batch)
            except Exception as exc:  # every failure is counted and kept, none ends the soak
                problem = f"{type(exc).__name__}: {exc}"[:300]
            result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            result.requests += 1
            if problem is None:
                result.images += batch
            else:
                result.errors += 1
                if len(result.error_samples) < 10:
                    result.error_samples.append(problem)

    async def sampler() -> None:
        while time.monotonic() < stop_at:
            now = time.monotonic() - start
            result.memory.append((now, sum(rss_mb(pid) for pid in server_pids())))
            bar.n = min(int(now), int(duration_s))
            bar.refresh()
            await asyncio.sleep(sample_s)
        result.memory.append((time.monotonic() - start, sum(rss_mb(pid) for pid in server_pids())))

    try:
        await asyncio.gather(sampler(), *(worker(w) for w in range(concurrency)))
    finally:
        bar.close()
        await client.close()
    result.duration_s = time.monotonic() - start
    return result


def soak(
    url: str,
    protocol: str,
    model: str,
    payloads: list[bytes],
    batch: int = 8,
    concurrency: int = 2,
    duration_s: float = 600.0,
    server_pids: Callable[[], list[int]] = list,
    sample_s: float = 5.0,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> SoakResult:
    """Run the soak (module docstring) and return its figures. ``server_pids()`` lists the
    processes whose memory is summed (re-read at every sample)."""
    return asyncio.run(_soak(url, protocol, model, payloads, batch, concurrency, duration_s, server_pids, sample_s, timeout_s, progress))
