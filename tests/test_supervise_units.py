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
