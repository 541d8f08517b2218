"""Fault injection against a server this process started (:class:`TritonServer` with
``supervise=True``): kill or freeze the tritonserver process, kill one Python-backend
instance, and run the real client (``client/classify.py``) through it.

Processes are found only as children of the supervisor this process started, by PID; nothing
is looked up or killed by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wastesort.paths import REPO_ROOT
from wastesort.triton.server import TritonServer
from wastesort.triton.supervise import Stub, children, command_name, read_stub

CLIENT = REPO_ROOT / "client" / "classify.py"


def triton_pid(server: TritonServer, timeout_s: float = 30.0) -> int:
    """PID of the tritonserver the supervisor (``server.process``) runs right now."""
    assert server.process is not None and server.supervise, "start the server with supervise=True"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [p for p in children(server.process.pid) if command_name(p) == "tritonserver"]
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise RuntimeError(f"no tritonserver under supervisor pid {server.process.pid}")


def stubs(server: TritonServer) -> dict[str, Stub]:
    """Live Python-backend instances of the running server, by instance name."""
    found = (read_stub(pid) for pid in children(triton_pid(server)))
    return {stub.instance: stub for stub in found if stub is not None and stub.model != "unknown model"}


def log_text(server: TritonServer) -> str:
    return server.log_path.read_text(errors="replace") if server.log_path and server.log_path.exists() else ""


def wait_for_log(server: TritonServer, needle: str, timeout_s: float = 30.0, after: int = 0) -> bool:
    """Wait until ``needle`` appears in the server log past character ``after``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in log_text(server)[after:]:
            return True
        time.sleep(0.1)
    return False


def supervisor_restart_reason(server: TritonServer) -> str | None:
    """Why the supervisor last restarted tritonserver, as it logged it, or None if it did not."""
    marker = ": restarting tritonserver"
    reasons = [line.split("] ", 1)[-1].split(marker)[0] for line in log_text(server).splitlines() if marker in line]
    return reasons[-1] if reasons else None


def metric_values(server: TritonServer, name: str) -> dict[str, float]:
    """``{labels: value}`` of one Prometheus metric family on the server's metrics endpoint."""
    out = {}
    for line in server.metrics_text().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name) :]] = float(value)
    return out


@dataclass
class Recovery:
    """Readiness as seen by polling ``/v2/health/ready`` every 0.1 s after a fault."""

    first_not_ready_s: float | None = None
    ready_again_s: float | None = None
    not_ready_polls: int = 0


def watch_readiness(server: TritonServer, timeout_s: float = 90.0) -> Recovery:
    """Poll readiness until it has gone down and come back (or ``timeout_s``)."""
    start, rec = time.monotonic(), Recovery()
    while time.monotonic() - start < timeout_s:
        now = time.monotonic() - start
        if not server.is_ready():
            rec.not_ready_polls += 1
            rec.first_not_ready_s = now if rec.first_not_ready_s is None else rec.first_not_ready_s
        elif rec.first_not_ready_s is not None:
            rec.ready_again_s = now
            return rec
        time.sleep(0.1)
    return rec


@dataclass
class ClientRun:
    """One run of ``client/classify.py --json`` with a fault injected part-way."""

    inputs: list[str]
    rows: list[dict]
    returncode: int
    stderr: str
    seconds: float
    fault_at_result: int
    extra: dict = field(default_factory=dict)

    @property
    def classified(self) -> int:
        return sum(1 for r in self.rows if r.get("error") is None)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r.get("error") is not None]

    def accounted_for(self) -> bool:
        """Every input reported exactly once (classified or failed), nothing else reported."""
        paths = [r["path"] for r in self.rows]
        return sorted(paths) == sorted(self.inputs)


def run_client_with_fault(
    url: str,
    protocol: str,
    images: list[Path],
    fault: Callable[[], None],
    after_results: int,
    client_args: list[str] | None = None,
    timeout_s: float = 600.0,
) -> ClientRun:
    """Start the real client on ``images``, call ``fault()`` once ``after_results`` results have
    been printed, and collect every line until the client exits."""
    cmd = [sys.executable, str(CLIENT), *map(str, images), "--url", url, "--protocol", protocol, "--json"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd + list(client_args or []), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows: list[dict] = []
    fired = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            rows.append(json.loads(line))
            if not fired and len(rows) >= after_results:
                fault()
                fired = True
        stderr = proc.stderr.read() if proc.stderr else ""
        code = proc.wait(timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return ClientRun([str(p) for p in images], rows, code, stderr, time.monotonic() - start, after_results if fired else -1)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)


@contextmanager
def server_gone_for_good(server: TritonServer) -> Iterator[Callable[[], None]]:
    """A fault that leaves the server down: it pauses the supervisor (SIGSTOP) and kills
    tritonserver, so nothing restarts it while the ``with`` block runs. On leaving the block the
    supervisor continues (SIGCONT), finds tritonserver gone and restarts it."""
    assert server.process is not None
    supervisor, pid = server.process.pid, triton_pid(server)

    def gone() -> None:
        kill(supervisor, signal.SIGSTOP)
        kill(pid)

    try:
        yield gone
    finally:
        kill(supervisor, signal.SIGCONT)


def server_processes(server: TritonServer) -> list[int]:
    """tritonserver and its Python-backend stubs (whose memory a soak sums)."""
    assert server.process is not None
    main = triton_pid(server) if server.supervise else server.process.pid
    return [main, *children(main)]
