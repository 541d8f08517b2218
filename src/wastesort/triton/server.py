"""Start the real ``tritonserver`` that ships in the ``nvidia-pytriton`` wheel, on this CPU box.

The wheel bundles Triton 2.51 (the server of NVIDIA's 24.10 containers), its libraries and the
Python backend, but no onnxruntime/tensorrt backend. Three things make it run from a venv:

* the backend stub for this Python (``python_backend_stubs/3.X/triton_python_backend_stub``) is
  copied into the wheel's ``backends/python`` folder (its RPATH then finds the bundled libs);
* ``LD_LIBRARY_PATH`` gets ``nvidia_pytriton.libs`` (belt and braces for the backend);
* the venv's ``bin/`` goes first on ``PATH``: the stub runs the first ``python3`` it finds,
  so ``model.py`` sees this environment's numpy, PIL, onnxruntime and ``wastesort``.

``python -m wastesort.triton.server`` (``make serve``) replaces itself with tritonserver in the
foreground under the watchdog of :mod:`wastesort.triton.supervise` (restarts the server when a
Python-backend instance dies; ``--no-supervise`` runs it bare), bound to 127.0.0.1 by default;
Ctrl-C / SIGTERM shut it down gracefully.
:class:`TritonServer` starts one in the background on free ports for tests and benchmarks and
stops it by its own PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wastesort.paths import REPO_ROOT
from wastesort.triton.supervise import http_ready

#: The model repository ``make serve`` serves.
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
#: Triton's latency summaries (``nv_inference_request_summary_us`` and friends, with quantiles).
LATENCY_SUMMARIES = "summary_latencies=true"
PORT_ENV = {"http": "TRITON_HTTP_PORT", "grpc": "TRITON_GRPC_PORT", "metrics": "TRITON_METRICS_PORT"}


#: Triton API groups that change the server or write files: behind the admin key when set.
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_HEADER = "admin-key"
#: gRPC clients send the key as metadata under this name (Triton prefixes restricted-protocol keys)
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerError(RuntimeError):
    """tritonserver is missing, failed to start, or did not become ready. The message says why."""


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError("nvidia-pytriton is not installed: run `make setup` (pip install -e '.[serve]')") from exc
    return Path(pytriton.__file__).resolve().parent


def _libs_dir() -> Path:
    return _pytriton_root().parent / "nvidia_pytriton.libs"


def tritonserver_binary() -> Path:
    """The tritonserver executable: ``$TRITONSERVER`` if set, else the one in nvidia-pytriton."""
    if os.environ.get("TRITONSERVER"):
        return Path(os.environ["TRITONSERVER"])
    binary = _pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(f"no tritonserver binary at {binary}")
    return binary


def backend_directory() -> Path:
    """``--backend-directory`` holding a Python backend with this interpreter's stub in place.

    Idempotent: copies ``triton_python_backend_stub`` for ``sys.version_info`` next to
    ``libtriton_python.so`` when it is missing or differs.
    """
    if os.environ.get("TRITON_BACKEND_DIR"):
        return Path(os.environ["TRITON_BACKEND_DIR"])
    root = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    target = root / "backends" / "python" / stub.name
    if not target.is_file() or target.stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target)
    return root / "backends"


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: this venv's ``bin/`` first on PATH, bundled libs on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    libs = [str(_libs_dir())] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def server_command(
    repository: Path = MODEL_REPOSITORY,
    ports: dict[str, int] | None = None,
    address: str = DEFAULT_ADDRESS,
    model_config_name: str | None = None,
    extra: list[str] | None = None,
    admin_key: str | None = None,
) -> list[str]:
    """The full tritonserver command line (model control ``none``: no load/unload over the API).

    ``admin_key``: restrict the :data:`ADMIN_APIS` groups (repository index/load/unload, shared
    memory registration, trace and log settings) on HTTP and gRPC to requests that carry the
    header ``admin-key: <key>`` (gRPC metadata ``triton-grpc-protocol-admin-key``), with
    Triton's ``--http-restricted-api`` and ``--grpc-restricted-protocol``. Health, metadata,
    config, statistics and inference stay open.
    """
    ports = {**DEFAULT_PORTS, **(ports or {})}
    cmd = [
        str(tritonserver_binary()),
        f"--model-repository={Path(repository).resolve()}",
        f"--backend-directory={backend_directory()}",
        "--model-control-mode=none",
        f"--http-address={address}",
        f"--http-port={ports['http']}",
        f"--grpc-address={address}",
        f"--grpc-port={ports['grpc']}",
        f"--metrics-address={address}",
        f"--metrics-port={ports['metrics']}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        f"--metrics-config={LATENCY_SUMMARIES}",  # p50/p90/p99 request latencies for the dashboard
        "--strict-readiness=true",
        "--exit-timeout-secs=10",
        "--disable-auto-complete-config",  # configs are served exactly as written
        "--pinned-memory-pool-byte-size=0",  # CPU build: no CUDA pinned memory
        "--cuda-memory-pool-byte-size=0:0",
    ]
    if model_config_name:
        cmd.append(f"--model-config-name={model_config_name}")
    if admin_key:
        if any(c.isspace() or c in ",:=" for c in admin_key):
            raise ServerError("the admin key must not contain whitespace, ',', ':' or '='")
        rule = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={admin_key}"
        cmd += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
    return cmd + list(extra or [])


def supervised(cmd: list[str], ready_url: str, options: list[str] | None = None) -> list[str]:
    """``cmd`` run under the watchdog of :mod:`wastesort.triton.supervise`."""
    return [sys.executable, "-m", "wastesort.triton.supervise", "--ready-url", ready_url, *(options or []), "--", *cmd]


def stop_child(process: subprocess.Popen | None, signum: int, timeout_s: float) -> int | None:
    """Stop a child we started, by its PID: ``signum`` (its graceful stop), SIGKILL after
    ``timeout_s``; returns its exit status (None when there was no process)."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(signum)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((DEFAULT_ADDRESS, 0))
        return int(sock.getsockname()[1])


@dataclass
class TritonServer:
    """A tritonserver child process on free ports, for tests and benchmarks.

    Usage::

        with TritonServer(repository) as server:
            server.http_url   # "127.0.0.1:PORT", for tritonclient.http
    """

    repository: Path = MODEL_REPOSITORY
    log_path: Path | None = None
    extra: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    #: where it listens (and where clients connect); a started server binds here too
    address: str = DEFAULT_ADDRESS
    #: run it under :mod:`wastesort.triton.supervise` (``process`` is then the supervisor)
    supervise: bool = False
    #: restrict the administrative APIs to this ``admin-key`` header value (see server_command)
    admin_key: str | None = None

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.ports['metrics']}/metrics"

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        """Start on free ports and wait until ``/v2/health/ready``; raises :class:`ServerError`
        with the end of the server log if it exits or does not get ready in time."""
        self.ports = {name: free_port() for name in DEFAULT_PORTS} if not self.ports else self.ports
        if self.log_path is None:
            self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"tritonserver-{os.getpid()}-{self.ports['http']}.log"
        cmd = server_command(self.repository, self.ports, address=self.address, extra=self.extra, admin_key=self.admin_key)
        if self.supervise:
            cmd = supervised(cmd, f"http://{self.http_url}/v2/health/ready")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True)
        process = self.process
        failure = self.poll_ready(timeout_s, lambda: None if process.poll() is None else f"exited with status {process.returncode}")
        if failure is not None:
            self.stop()
            raise ServerError(f"tritonserver {failure}:\n{self.log_tail()}")
        return self

    def poll_ready(self, timeout_s: float, died: Callable[[], str | None]) -> str | None:
        """Poll ``/v2/health/ready`` until it answers (returns None), ``died()`` reports why the
        server is gone, or ``timeout_s`` passes (returns the reason)."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if (reason := died()) is not None:
                return reason
            if time.monotonic() > deadline:
                return f"not ready after {timeout_s:.0f} s"
            time.sleep(0.25)
        return None

    def is_ready(self) -> bool:
        """True when the HTTP endpoint answers ``/v2/health/ready`` with 200."""
        return http_ready(f"http://{self.http_url}/v2/health/ready")

    def metrics_text(self, wait_s: float = 10.0) -> str:
        """The Prometheus text the metrics endpoint serves now. Tritonserver opens its metrics
        port a moment after the HTTP endpoint reports ready (seen right after a restart), so a
        refused connection is retried for up to ``wait_s`` before it is raised."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
                    return resp.read().decode()
            except urllib.error.URLError as exc:
                if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to our own child (then SIGKILL after ``timeout_s``); returns its exit status."""
        return stop_child(self.process, signal.SIGTERM, timeout_s)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(http_port: int, timeout_s: float = 120.0, pid: int | None = None) -> None:
    """Block until the server on ``127.0.0.1:http_port`` is ready; exit non-zero if ``pid``
    dies or ``timeout_s`` passes first (for scripts that start the server in the background)."""

    def died() -> str | None:
        if pid is None:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"(pid {pid}) exited before it was ready"
        return None

    failure = TritonServer(ports={"http": http_port}).poll_ready(timeout_s, died)
    if failure is not None:
        raise SystemExit(f"tritonserver on port {http_port} {failure}")
    print(f"tritonserver ready on {DEFAULT_ADDRESS}:{http_port}")


def _port_from_env(name: str) -> int:
    raw = os.environ.get(PORT_ENV[name], str(DEFAULT_PORTS[name]))
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{PORT_ENV[name]}={raw!r} is not a port number") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run tritonserver (from nvidia-pytriton) on the model repository, in the foreground.")
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="model repository (default: %(default)s)")
    parser.add_argument(
        "--address",
        default=os.environ.get("TRITON_ADDRESS", DEFAULT_ADDRESS),
        help="address to bind HTTP, gRPC and metrics to (default 127.0.0.1; 0.0.0.0 exposes the server)",
    )
    for name in DEFAULT_PORTS:
        parser.add_argument(
            f"--{name}-port", type=int, default=_port_from_env(name), help=f"default ${PORT_ENV[name]} or {DEFAULT_PORTS[name]}"
        )
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        default=None,
        help="file holding the key that the administrative APIs will require in an 'admin-key' header "
        "(default: $TRITON_ADMIN_KEY); required when --address is not loopback",
    )
    parser.add_argument("--unrestricted", action="store_true", help="allow a non-loopback --address without an admin key (not recommended)")
    parser.add_argument("--model-config-name", default=None, help="use <model>/configs/<name>.pbtxt where present (Triton's custom config)")
    parser.add_argument(
        "--no-supervise", action="store_true", help="run tritonserver bare, without the watchdog for dead Python-backend instances"
    )
    parser.add_argument(
        "--on-instance-death",
        choices=("restart", "exit"),
        default="restart",
        help="watchdog policy: restart the server (default) or exit 70 for an orchestrator to restart it",
    )
    parser.add_argument("--print-command", action="store_true", help="print the command line and environment, do not start")
    parser.add_argument("--wait-ready", action="store_true", help="do not start: wait until a server on --http-port is ready")
    parser.add_argument("--pid", type=int, default=None, help="with --wait-ready: fail at once if this process exits")
    parser.add_argument("--timeout", type=float, default=120.0, help="with --wait-ready: seconds (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)
    if args.wait_ready:
        wait_ready(args.http_port, args.timeout, args.pid)
        return
    admin_key = args.admin_key_file.read_text().strip() if args.admin_key_file else os.environ.get("TRITON_ADMIN_KEY") or None
    if args.address not in LOOPBACK and not admin_key and not args.unrestricted:
        raise SystemExit(
            f"error: --address {args.address} exposes the server beyond this machine; set TRITON_ADMIN_KEY (or --admin-key-file) "
            f"so that {', '.join(ADMIN_APIS)} require an '{ADMIN_HEADER}' header, or pass --unrestricted"
        )
    try:
        cmd = server_command(
            args.repository,
            {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port},
            args.address,
            args.model_config_name,
            extra,
            admin_key,
        )
    except ServerError as exc:
        raise SystemExit(f"error: {exc}") from None
    env = server_env()
    if not args.no_supervise:
        host = DEFAULT_ADDRESS if args.address in ("0.0.0.0", "::") else args.address
        cmd = supervised(cmd, f"http://{host}:{args.http_port}/v2/health/ready", ["--on-death", args.on_instance_death])
    if args.print_command:
        print(f"PATH={env['PATH'].split(os.pathsep)[0]}:... LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}")
        print(" ".join(cmd).replace(f"={admin_key}", "=***") if admin_key else " ".join(cmd))
        return
    print(
        f"tritonserver on {args.address}: http {args.http_port}, grpc {args.grpc_port}, metrics {args.metrics_port}; "
        f"repository {args.repository}",
        file=sys.stderr,
        flush=True,
    )
    # tritonserver handles SIGINT/SIGTERM with a graceful shutdown; the supervisor passes them on
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
