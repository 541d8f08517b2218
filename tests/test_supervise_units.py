"""The supervisor's restart policy on stand-in processes (no Triton needed): a server killed by
a signal is restarted even before it was seen ready; one that exits on its own before it was
ever ready (a broken repository) is not; one stopped on purpose is not."""

from __future__ import annotations

import os
import signal
import sys
import threading

from wastesort.triton.supervise import Supervisor

NEVER_READY = "http://127.0.0.1:9/v2/health/ready"  # discard port: nothing answers


def _supervisor(code: str) -> Supervisor:
    supervisor = Supervisor([sys.executable, "-c", code], NEVER_READY, poll_s=0.05, stop_timeout_s=5)
    supervisor.start()
    return supervisor


def test_a_server_killed_by_a_signal_before_its_first_ready_poll_is_restarted() -> None:
    supervisor = _supervisor("import time; time.sleep(30)")
    assert supervisor.process is not None
    os.kill(supervisor.process.pid, signal.SIGKILL)
    status, reason = supervisor.watch()
    assert status == -signal.SIGKILL and reason == "tritonserver was killed by signal 9"


def test_a_server_that_exits_before_it_was_ever_ready_is_not_restarted() -> None:
    supervisor = _supervisor("import sys; sys.exit(3)")
    assert supervisor.watch() == (3, None)


def test_a_server_stopped_on_purpose_is_not_restarted() -> None:
    supervisor = _supervisor("import time; time.sleep(30)")
    timer = threading.Timer(0.3, lambda: (setattr(supervisor, "stopping", True), supervisor.stop()))
    timer.start()
    status, reason = supervisor.watch()
    timer.join()
    assert reason is None and status == -signal.SIGTERM


def test_metrics_are_read_once_the_port_opens_and_a_port_that_stays_closed_is_an_error() -> None:
    """Tritonserver opens its metrics port a moment after it reports ready: the read waits for it."""
    import http.server
    import socket
    import time
    import urllib.error

    import pytest

    from wastesort.triton.server import TritonServer

    with socket.socket() as s:  # a free port, closed again: nothing listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the handler's API)
            body = b'nv_inference_count{model="m"} 3\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    servers: list[http.server.HTTPServer] = []

    def open_later() -> None:
        servers.append(http.server.HTTPServer(("127.0.0.1", port), Metrics))
        servers[0].serve_forever()

    timer = threading.Timer(0.5, open_later)
    timer.start()
    try:
        assert TritonServer(ports={"metrics": port}).metrics_text(wait_s=10) == 'nv_inference_count{model="m"} 3\n'
    finally:  # serve_forever runs on the timer's thread until shutdown
        timer.cancel()
        while timer.is_alive() and not servers:
            time.sleep(0.01)
        if servers:
            servers[0].shutdown()
            servers[0].server_close()
        timer.join()
    with pytest.raises(urllib.error.URLError):
        TritonServer(ports={"metrics": port}).metrics_text(wait_s=0.3)
