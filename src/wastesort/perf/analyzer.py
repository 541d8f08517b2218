"""Driving Triton's ``perf_analyzer``: the command line, real input data, the ``-f`` CSV, and
the best operating point within a latency budget.

``perf_analyzer`` ships in the ``tritonclient==2.50.0`` manylinux wheel (installed to the
venv's ``bin/``). It links ``libb64.so.0d`` (Debian ``libb64-0d``) and ``libcudart.so.12``
(PyPI ``nvidia-cuda-runtime-cu12``; :func:`analyzer_env` puts its ``lib/`` on
``LD_LIBRARY_PATH``). In NVIDIA's ``-py3-sdk`` container it is on ``PATH`` already.

All latencies in the CSV are microseconds; :class:`ServedPoint` keeps them so and offers
millisecond helpers.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wastesort.triton.config import serialize_bytes_tensor

#: ``-f`` CSV header -> :class:`ServedPoint` field (perf_analyzer 2.50, concurrency mode).
CSV_FIELDS = {
    "Concurrency": "concurrency",
    "Inferences/Second": "infer_per_s",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
    "Client Recv": "client_recv_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
}
#: Columns some perf_analyzer releases add; read when present.
OPTIONAL_FIELDS = {"Avg latency": "avg_us"}


class AnalyzerError(RuntimeError):
    """perf_analyzer is missing, cannot start, or failed a run."""


@dataclass(frozen=True)
class ServedPoint:
    """One row of perf_analyzer's CSV: one concurrency level (latencies in microseconds).

    ``infer_per_s`` counts inferences, i.e. images when every request carries one image
    (``-b 1``); with ``-b B`` it is ``B`` times the request rate.
    """

    concurrency: int
    infer_per_s: float
    client_send_us: float
    network_us: float
    server_queue_us: float
    server_compute_input_us: float
    server_compute_infer_us: float
    server_compute_output_us: float
    client_recv_us: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float | None = None

    @property
    def p99_ms(self) -> float:
        return self.p99_us / 1000.0

    def breakdown_ms(self) -> dict[str, float]:
        """Server-side split of the average request (ms): queue, compute input/infer/output."""
        return {
            "queue": self.server_queue_us / 1000.0,
            "compute_input": self.server_compute_input_us / 1000.0,
            "compute_infer": self.server_compute_infer_us / 1000.0,
            "compute_output": self.server_compute_output_us / 1000.0,
        }


def parse_csv(text: str) -> list[ServedPoint]:
    """The rows of a perf_analyzer ``-f`` CSV (extra columns, e.g. ``--collect-metrics``, are
    ignored), sorted by concurrency.

    Raises:
        AnalyzerError: a required column is missing or a value is not a number.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_FIELDS if c not in (reader.fieldnames or [])]
    if missing:
        raise AnalyzerError(f"perf_analyzer CSV lacks columns {missing} (header: {reader.fieldnames})")
    points = []
    for line, row in enumerate(reader, start=2):
        try:
            values = {field: float(row[column]) for column, field in CSV_FIELDS.items()}
            values |= {field: float(row[column]) for column, field in OPTIONAL_FIELDS.items() if row.get(column)}
        except (TypeError, ValueError) as exc:
            raise AnalyzerError(f"perf_analyzer CSV line {line}: {exc}") from exc
        values["concurrency"] = int(values["concurrency"])
        points.append(ServedPoint(**values))
    return sorted(points, key=lambda p: p.concurrency)


def best_within(points: list[ServedPoint], p99_budget_ms: float) -> ServedPoint | None:
    """The highest-throughput point whose p99 latency is within the budget (None if none is)."""
    within = [p for p in points if p.p99_ms <= p99_budget_ms]
    return max(within, key=lambda p: p.infer_per_s) if within else None


def bytes_input_data(images: list[bytes], input_name: str) -> dict:
    """``--input-data`` JSON for a BYTES ``[1]`` input: one entry per encoded image, as
    base64 of Triton's serialised BYTES tensor (4-byte little-endian length, then the bytes)."""
    return {
        "data": [
            {input_name: {"content": {"b64": base64.b64encode(serialize_bytes_tensor([img])).decode("ascii")}, "shape": [1]}}
            for img in images
        ]
    }


def tensor_input_data(images: np.ndarray, input_name: str) -> dict:
    """``--input-data`` JSON for a float32 ``(N, 3, H, W)`` batch: one entry per image, as
    base64 of its little-endian row-major bytes."""
    return {"data": [{input_name: {"b64": base64.b64encode(np.ascontiguousarray(img, "<f4").tobytes()).decode("ascii")}} for img in images]}


def perf_analyzer_binary() -> Path | None:
    """The venv's perf_analyzer, else the one on PATH (NVIDIA's SDK container)."""
    local = Path(sys.executable).parent / "perf_analyzer"
    if local.exists():
        return local
    found = shutil.which("perf_analyzer")
    return Path(found) if found else None


def analyzer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment with ``libcudart.so.12`` from ``nvidia-cuda-runtime-cu12`` on the library path."""
    env = dict(os.environ if base is None else base)
    try:
        import nvidia.cuda_runtime

        lib_dirs = [str(Path(p) / "lib") for p in nvidia.cuda_runtime.__path__]
    except ImportError:
        lib_dirs = []
    if lib_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*lib_dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def unavailable_reason() -> str | None:
    """None when perf_analyzer runs here, else one line saying why not and what to install."""
    binary = perf_analyzer_binary()
    if binary is None:
        return "perf_analyzer not found (pip install tritonclient[all]==2.50.0, or use the -py3-sdk container)"
    probe = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=analyzer_env())
    if probe.returncode != 0:
        detail = (probe.stderr or probe.stdout).strip().splitlines()
        hint = ""
        if "libb64" in probe.stderr:
            hint = " (apt-get install libb64-0d)"
        elif "libcudart" in probe.stderr:
            hint = " (pip install nvidia-cuda-runtime-cu12)"
        return f"perf_analyzer does not start: {detail[-1] if detail else probe.returncode}{hint}"
    return None


@dataclass(frozen=True)
class SweepSettings:
    """A sweep: concurrency levels (one perf_analyzer run each), images per request, measurement
    window (ms), stability threshold (%) and trial limit per level."""

    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch: int = 1
    measurement_ms: int = 3000
    stability_percent: int = 20
    max_trials: int = 10


def fresh_raw_folder(folder: Path) -> Path:
    """``folder`` created, with the CSVs and logs of an earlier run removed (other files kept):
    a level this run does not reach leaves no stale result behind."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.csv"), *folder.glob("*.log")]:
        stale.unlink()
    return folder


def command(model: str, url: str, protocol: str, concurrency: int, csv_path: Path, input_data: Path, settings: SweepSettings) -> list[str]:
    """The perf_analyzer command line for one model, one protocol (``http`` or ``grpc``) and
    one concurrency level."""
    if protocol not in ("http", "grpc"):
        raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
    binary = perf_analyzer_binary() or Path("perf_analyzer")
    return [
        str(binary),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "-b", str(settings.batch),
        "--concurrency-range", str(concurrency),
        "--input-data", str(input_data),
        "--measurement-interval", str(settings.measurement_ms),
        "--stability-percentage", str(settings.stability_percent),
        "--max-trials", str(settings.max_trials),
        "-f", str(csv_path),
    ]  # fmt: skip


def run(cmd: list[str], log_path: Path, timeout_s: float = 600.0) -> None:
    """Run one perf_analyzer command, its output to ``log_path``; raises :class:`AnalyzerError`
    with the end of the log when it fails."""
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=analyzer_env(), timeout=timeout_s)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise AnalyzerError(f"perf_analyzer exited with {proc.returncode}:\n{tail}")


def sweep(
    model: str,
    url: str,
    protocol: str,
    levels: list[int],
    input_data: Path,
    settings: SweepSettings,
    raw: Path,
    stop_past_ms: float,
    on_level: Callable[[str], None] = lambda stem: None,
) -> tuple[list[ServedPoint], str]:
    """One perf_analyzer run per concurrency level (CSV and log under ``raw``), lowest first;
    stops early once p99 passes ``stop_past_ms`` (far past the knee, higher levels only queue
    longer). Returns the points and the first error line ('' when none); ``on_level`` is
    called with each run's file stem, for progress bars."""
    points: list[ServedPoint] = []
    for level in levels:
        stem = f"{model}_{protocol}_b{settings.batch}_c{level}"
        csv_path = raw / f"{stem}.csv"
        on_level(stem)
        try:
            run(command(model, url, protocol, level, csv_path, input_data, settings), raw / f"{stem}.log")
            points += parse_csv(csv_path.read_text())
        except (AnalyzerError, OSError) as exc:
            print(f"{stem}: {exc}", file=sys.stderr)
            return points, str(exc).splitlines()[0]
        if points and points[-1].p99_ms > stop_past_ms:
            break
    return points, ""
