"""Integration: two real tritonserver replicas behind Debian's HAProxy with Prometheus, on
loopback (``make scale-demo --quick`` on synthetic photos): routing over HTTP and gRPC, a
replica killed under load, another drained, the recording rule evaluated on real metrics.

Bounded: 160 photos per client run, every process on 127.0.0.1 and stopped by its PID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from wastesort.reliability.images import photo_files
from wastesort.scale.demo import Settings, run_demo
from wastesort.scale.haproxy import LOG_FORMAT, HealthCheck, Replica, config, parse_log
from wastesort.scale.report import tables

pytestmark = pytest.mark.server

MISSING = [tool for tool in ("haproxy", "prometheus") if shutil.which(tool) is None]
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (apt-get install {' '.join(MISSING)})")


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if MISSING:
        pytest.skip(f"not installed: {', '.join(MISSING)}")
    work = tmp_path_factory.mktemp("scale")
    photos, source = photo_files(work / "no-such-data", work, 160)
    assert "SYNTHETIC" in source
    return run_demo(Settings(replicas=2, images=len(photos), quick=True), work / "out", work / "run", photos, source)


@needs_tools
def test_balancer_routes_http_and_grpc_to_every_replica(summary: dict[str, Any]) -> None:
    for protocol in ("http", "grpc"):
        row = summary["routing"][protocol]
        assert (row["classified"], row["failed"]) == (16, 0), protocol
        assert sum(row["requests_per_replica"].values()) >= 16
    assert all(n > 0 for n in summary["routing"]["http"]["requests_per_replica"].values()), "leastconn spreads over both"


@needs_tools
def test_failover_loses_nothing(summary: dict[str, Any]) -> None:
    assert summary["images"] == 160
    assert summary["lost"] == 0
    assert summary["classified"] + summary["failed_listed"] == 160
    assert summary["answered_twice"] == 0
    assert summary["label_mismatches_between_runs"] == 0
    assert summary["stale_routing_s"] is not None and summary["stale_routing_s"] < 5, "the health check took the dead replica out"
    assert summary["recovered_s"] is not None, "the supervisor restarted it and the balancer took it back"


@needs_tools
def test_drain_has_no_errors(summary: dict[str, Any]) -> None:
    assert summary["drain_errors"] == 0
    drain = summary["drain"]
    assert drain["classified"] == drain["images"] == 160
    assert drain["exit_status"] == 0, "tritonserver stopped gracefully"
    assert drain["client_exit_status"] == 0


@needs_tools
def test_recording_rule_reads_the_real_metrics(summary: dict[str, Any]) -> None:
    auto = summary["autoscaling"]
    assert auto["rule_metrics_on_server"] and all(auto["rule_metrics_on_server"].values()), auto["rule_metrics_on_server"]
    idle = auto["idle"]
    assert set(idle["queue_us_per_pod"]) == {"replica-0", "replica-1"}
    assert idle["hpa_desired_replicas"] == 2  # minReplicas


@needs_tools
def test_summary_has_the_issue_fields_and_a_report(summary: dict[str, Any], tmp_path: Path) -> None:
    for key in ("replicas", "images", "classified", "failed_listed", "lost", "stale_routing_s", "drain_errors", "autoscaling"):
        assert key in summary
    assert "perf_skipped" in summary  # quick: balancer_over_direct is measured by make scale-demo
    text = tables(summary)
    assert "| 160 | 160 |" in text and "Drain" in text
    json.dumps(summary)


def test_haproxy_config_and_log_format(tmp_path: Path) -> None:
    cfg = config(
        [Replica("replica-0", 9000, 9001), Replica("replica-1", 9010, 9011)], HealthCheck("/v2/models/m/ready"), 8000, 8001, tmp_path / "s"
    )
    assert "option httpchk GET /v2/models/m/ready" in cfg
    assert "server replica-1 127.0.0.1:9011 proto h2 track triton_http/replica-1" in cfg
    assert "127.0.0.1:8001 proto h2" in cfg and "0.0.0.0" not in cfg
    assert LOG_FORMAT in cfg
    if shutil.which("haproxy"):
        (tmp_path / "h.cfg").write_text(cfg)
        checked = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    log = (
        "1763790000.123 http_in triton_http/replica-0 200 0 12 ----\n"
        "noise line\n"
        "1763790000.500 http_in triton_http/replica-1 200 +1 30 ----\n"
    )
    lines = parse_log(log)
    assert [(x.server, x.retries, x.redispatched) for x in lines] == [("replica-0", 0, False), ("replica-1", 1, True)]
    assert lines[0].time_s == pytest.approx(1763790000.123)
