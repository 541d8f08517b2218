"""Run tritonserver under a watchdog that notices dead Python-backend instances.

Triton 2.51 (the 24.10 containers, and the server in nvidia-pytriton) does not notice when a
Python-backend stub process dies (OOM killer, segfault in a native library, ``kill -9``): the
model stays READY, ``/v2/health/ready`` stays 200, and every request routed to the dead
instance fails with "Stub process is not healthy" until someone restarts the server. (Later
releases check the stub in the model-ready call; see docs/reliability.md.)

``python -m wastesort.triton.supervise [options] -- tritonserver ARGS...`` starts the command
and, every ``--poll`` seconds, looks at the server's own child processes (this project never
looks processes up by name; only the children of the server it started):

* a stub that died is logged as an ``ERROR`` line naming the model and the PID, and the server
  is restarted (``--on-death restart``, the default: graceful SIGTERM, SIGKILL after
  ``--stop-timeout``; health and model-ready checks fail until the new server is ready) or
  stopped with exit status 70 for an orchestrator to restart (``--on-death exit``);
* a server killed by a signal, or one that exits on its own after it had been ready, is
  restarted the same way; one that exits on its own before it was ever ready (a broken
  repository) is not: the supervisor exits with its status;
* more than ``--max-restarts`` restarts within ten minutes: give up, exit 70.

Every restarted server gets ``WASTESORT_INSTANCE_DEATHS`` (JSON ``{model: deaths}``) in its
environment; the ``preprocess`` model publishes it as the Prometheus gauge
``wastesort_instance_deaths{model=...}`` on Triton's metrics endpoint, so the failure stays
visible in metrics after the restart that cleared Triton's own counters.

SIGINT/SIGTERM are passed to the server; the supervisor exits with the server's status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Exit status when the supervisor gives up or ``--on-death exit`` fires (EX_SOFTWARE).
EXIT_GAVE_UP = 70
DEATHS_ENV = "WASTESORT_INSTANCE_DEATHS"
STUB_NAME = "triton_python_backend_stub"
RESTART_WINDOW_S = 600.0


def log(message: str, level: str = "I") -> None:
    """One line in Triton's log style, on stderr (the stream the server logs to)."""
    print(f"{level}{time.strftime('%m%d %H:%M:%S')} supervise] {message}", file=sys.stderr, flush=True)


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``, zombies included (from ``/proc/<pid>/stat``)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def command_name(pid: int) -> str:
    """The kernel's name for ``pid`` (``comm``: at most 15 characters; kept by zombies)."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@dataclass(frozen=True)
class Stub:
    """A Python-backend stub process, read from its command line
    (``triton_python_backend_stub <repo>/<model>/<version>/model.py <shm region> ... <instance>``)."""

    pid: int
    model: str
    instance: str
    shm_region: str


def read_stub(pid: int) -> Stub | None:
    """The :class:`Stub` running as ``pid``, or None when ``pid`` is not a stub. Read it while
    the process lives: a dead one's command line is empty."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [arg.decode(errors="replace") for arg in fh.read().split(b"\0")]
    except (FileNotFoundError, ProcessLookupError):
        return None
    if len(argv) < 3 or not argv[0].endswith(STUB_NAME):
        if STUB_NAME.startswith(command_name(pid) or "-") and is_dead(pid):  # died before we read it
            return Stub(pid, "unknown model", f"unknown instance (pid {pid})", "")
        return None
    model = Path(argv[1]).parent.parent.name
    instance = argv[8] if len(argv) > 8 and argv[8] else model
    return Stub(pid, model, instance, argv[2])


def is_dead(pid: int) -> bool:
    """True once ``pid`` has exited: a zombie its parent has not reaped, or gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def remove_region(stub: Stub) -> bool:
    """Remove the /dev/shm region a dead stub left behind (Triton does not); True when there
    was one. Only a Python-backend region, and only once its stub is dead."""
    region = Path("/dev/shm") / stub.shm_region
    if not stub.shm_region.startswith("triton_python_backend_shm_region_") or not region.exists() or not is_dead(stub.pid):
        return False
    region.unlink(missing_ok=True)
    return True


@dataclass
class Supervisor:
    """Start ``command``, watch it and its stubs, restart per the policy (module docstring)."""

    command: list[str]
    ready_url: str
    on_death: str = "restart"
    poll_s: float = 0.5
    stop_timeout_s: float = 30.0
    #: after a death: Triton's graceful stop waits its whole exit timeout for the dead instance
    #: while still answering ready, so the restart kills it sooner
    death_stop_timeout_s: float = 3.0
    max_restarts: int = 5
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    deaths: Counter = field(default_factory=Counter)
    restarts: list[float] = field(default_factory=list)
    process: subprocess.Popen | None = None
    stopping: bool = False
    stubs: dict[int, Stub] = field(default_factory=dict)

    def start(self) -> None:
        env = dict(self.env)
        env[DEATHS_ENV] = json.dumps(dict(self.deaths))
        self.stubs = {}
        self.process = subprocess.Popen(self.command, env=env)
        log(f"started tritonserver (pid {self.process.pid})")

    def stop(self, timeout_s: float | None = None) -> int:
        """SIGTERM the server (graceful), SIGKILL after ``timeout_s`` (default
        ``stop_timeout_s``); remove the shared-memory regions its stubs left; returns its status."""
        assert self.process is not None
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"tritonserver (pid {self.process.pid}) did not stop in {timeout_s:.0f} s: SIGKILL", "W")
                self.process.kill()
        status = self.process.wait()
        self.clean_up_after_exit()
        return status

    def clean_up_after_exit(self) -> None:
        """Clean up after a server that has exited. Its stubs do not always follow it: after a
        SIGKILL they live on as orphans holding their models' memory, so the ones still running
        (checked by PID and shared-memory region, never by name) are killed; then the regions
        they used, which a dead stub leaves in /dev/shm, are removed."""
        for stub in self.stubs.values():
            alive = read_stub(stub.pid)
            if alive is not None and alive.shm_region == stub.shm_region and not is_dead(stub.pid):
                log(f"stopping instance {stub.instance} (stub pid {stub.pid}) left behind by the server", "W")
                os.kill(stub.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(not is_dead(stub.pid) for stub in self.stubs.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for stub in self.stubs.values():
            remove_region(stub)

    def forward(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def run(self) -> int:
        """Supervise until the server exits for good; returns the exit status."""
        signal.signal(signal.SIGTERM, self.forward)
        signal.signal(signal.SIGINT, self.forward)
        self.start()
        while True:
            status, reason = self.watch()
            if self.stopping or reason is None:
                self.clean_up_after_exit()
                return status
            if self.on_death == "exit":
                log(f"{reason}: stopping (--on-death exit)", "E")
                self.stop()
                return EXIT_GAVE_UP
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(self.restarts) > self.max_restarts:
                log(f"{reason}: {len(self.restarts) - 1} restarts in {RESTART_WINDOW_S / 60:.0f} minutes already; giving up", "E")
                self.stop()
                return EXIT_GAVE_UP
            log(f"{reason}: restarting tritonserver (restart {len(self.restarts)}); not ready until it is back", "E")
            self.stop(self.death_stop_timeout_s)
            if self.stopping:
                return self.process.returncode if self.process else 0
            self.start()

    def watch(self) -> tuple[int, str | None]:
        """Poll the running server. Returns ``(status, reason)``: ``reason`` says why it must
        be restarted, or is None when it exited and must not be (stopped, or never ready)."""
        assert self.process is not None
        was_ready = False
        while True:
            status = self.process.poll()
            if status is not None:
                if self.stopping:
                    return status, None
                if status < 0:  # a signal (kill -9, the OOM killer): never a broken repository
                    return status, f"tritonserver was killed by signal {-status}"
                if not was_ready:
                    log(f"tritonserver exited with status {status} before it was ready; not restarting", "E")
                    return status, None
                return status, f"tritonserver exited unexpectedly with status {status}"
            found = [stub for pid in children(self.process.pid) if pid not in self.stubs and (stub := read_stub(pid)) is not None]
            for stub in found:
                self.stubs[stub.pid] = stub
                log(f"watching Python-backend instance {stub.instance} (stub pid {stub.pid})")
            dead = [stub for stub in self.stubs.values() if is_dead(stub.pid)]
            if dead and not self.stopping:
                for stub in dead:
                    self.deaths[stub.model] += 1
                    log(f"Python-backend instance {stub.instance} of model '{stub.model}' (stub pid {stub.pid}) died", "E")
                names = ", ".join(sorted({stub.instance for stub in dead}))
                return 0, f"instance {names} died (Triton keeps the model READY)"
            was_ready = was_ready or http_ready(self.ready_url)
            time.sleep(self.poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run tritonserver under a watchdog for dead Python-backend instances.",
        usage="python -m wastesort.triton.supervise [options] -- tritonserver ARGS...",
    )
    parser.add_argument("--ready-url", default=None, help="readiness URL (default: from --http-port in the command, else 8000)")
    parser.add_argument("--on-death", choices=("restart", "exit"), default="restart")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between checks (default: %(default)s)")
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="seconds before SIGKILL (default: %(default)s)")
    parser.add_argument("--max-restarts", type=int, default=5, help="within ten minutes (default: %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: put the tritonserver command line after --")
    host = _flag(command, "http-address", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    ready_url = args.ready_url or f"http://{host}:{_flag(command, 'http-port', '8000')}/v2/health/ready"
    supervisor = Supervisor(
        command, ready_url, on_death=args.on_death, poll_s=args.poll, stop_timeout_s=args.stop_timeout, max_restarts=args.max_restarts
    )
    return supervisor.run()


def _flag(command: list[str], name: str, default: str) -> str:
    for item in command:
        if item.startswith(f"--{name}="):
            return item.split("=", 1)[1]
    return default


if __name__ == "__main__":
    sys.exit(main())
