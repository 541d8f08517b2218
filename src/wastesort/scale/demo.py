"""The loopback scale-out demo behind ``make scale-demo``: replicas, balancer, failover, drain
and the autoscaling signal, measured in one run.

Every process binds to 127.0.0.1 on free ports and is stopped by its own PID; every load is
bounded in images or time. Steps (each result lands in :class:`Summary`):

1. ``replicas`` supervised tritonservers (:class:`wastesort.triton.server.TritonServer`),
   HAProxy in front (:mod:`wastesort.scale.haproxy`), Prometheus scraping them with the
   manifests' recording rule (:mod:`wastesort.scale.prometheus`).
2. Routing: the client classifies photos through the balancer over HTTP and gRPC.
3. Idle signal; then (unless ``quick``) a perf_analyzer concurrency sweep through the balancer,
   its knee, the throughput through the balancer against one replica direct at the knee, and
   the signal under load at the knee and at four times the knee.
4. Failover: the client classifies ``images`` photos through the balancer while one replica's
   tritonserver is killed with SIGKILL (its supervisor restarts it); every photo must come
   back labelled or listed as failed.
5. Drain: the same photos again, the client's retries off, while another replica is taken
   out as Kubernetes does it (out of the balancer, in-flight requests finish, then SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wastesort.machine import describe
from wastesort.paths import REPO_ROOT
from wastesort.perf import analyzer
from wastesort.scale.haproxy import GRPC_BACKEND, HTTP_BACKEND, HAProxy, HealthCheck, Replica
from wastesort.scale.manifests import desired_replicas, hpa_target, recording_rule
from wastesort.scale.prometheus import Prometheus
from wastesort.shipped import DEFAULT_NET, IMAGE_BYTES
from wastesort.triton.naming import ensemble_name
from wastesort.triton.server import MODEL_REPOSITORY, TritonServer
from wastesort.triton.supervise import children

CLIENT = REPO_ROOT / "client" / "classify.py"


@dataclass(frozen=True)
class Settings:
    """What the demo runs: ``replicas`` servers, ``images`` photos per failover/drain run,
    ``quick`` skips perf_analyzer (sweep, throughput, signal under load)."""

    replicas: int = 2
    images: int = 1200
    quick: bool = False
    net: str = DEFAULT_NET
    repository: Path = MODEL_REPOSITORY
    sweep: tuple[int, ...] = (1, 2, 4, 8, 16)
    #: fraction of the photos answered before the replica is killed / drained
    trigger_fraction: float = 0.25
    client_batch: int = 1
    client_concurrency: int = 8
    #: seconds of load before the signal is read (the rule's rate window is 30 s)
    signal_load_s: float = 40.0


@dataclass
class ClientRun:
    """One client run through the balancer: its JSON lines read back per photo."""

    sent: int
    labels: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    exit_status: int | None = None
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - len(self.labels) - len(self.errors)


def client_command(url: str, photos: list[Path], protocol: str, settings: Settings, retries: int | None = None) -> list[str]:
    cmd = [sys.executable, str(CLIENT), *map(str, photos), "--url", url, "--protocol", protocol, "--json", "--quiet"]
    cmd += [
        "--model",
        ensemble_name(settings.net),
        "--batch-size",
        str(settings.client_batch),
        "--concurrency",
        str(settings.client_concurrency),
    ]
    return cmd + ([] if retries is None else ["--retries", str(retries)])


def read_client(out_path: Path, sent: int) -> ClientRun:
    run = ClientRun(sent)
    seen: Counter[str] = Counter()
    for line in out_path.read_text().splitlines():
        item = json.loads(line)
        seen[item["path"]] += 1
        if item.get("error"):
            run.errors[item["path"]] = item["error"]
        else:
            run.labels[item["path"]] = item["label"]
    run.duplicates = sum(n - 1 for n in seen.values())
    return run


def classify(
    cmd: list[str], out_path: Path, sent: int, when: float | None = None, action: Any = None, timeout_s: float = 300.0
) -> tuple[ClientRun, Any]:
    """Run the client; once ``when`` (a fraction) of the photos are answered call ``action()``
    (in this thread, while the client goes on) and return its result with the run."""
    start = time.monotonic()
    result = None
    with open(out_path, "w") as out, open(out_path.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
        try:
            while proc.poll() is None:
                if action is not None and when is not None and out_path.read_text().count("\n") >= when * sent:
                    result, action = action(), None
                if time.monotonic() - start > timeout_s:
                    raise TimeoutError(f"client did not finish in {timeout_s:.0f} s: {' '.join(cmd[:4])} ...")
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    run = read_client(out_path, sent)
    run.exit_status, run.seconds = proc.returncode, time.monotonic() - start
    if action is not None:  # finished before the trigger: the action never ran
        raise RuntimeError(f"the client finished before {when:.0%} of the photos were answered: use more --images")
    return run, result


@dataclass
class Cluster:
    """The replicas, the balancer and Prometheus, started together and stopped by PID."""

    settings: Settings
    workdir: Path
    servers: dict[str, TritonServer] = field(default_factory=dict)
    balancer: HAProxy | None = None
    prometheus: Prometheus | None = None

    def start(self) -> Cluster:
        names = [f"replica-{i}" for i in range(self.settings.replicas)]
        for name in names:  # start them all, then wait: they load in parallel
            server = TritonServer(self.settings.repository, log_path=self.workdir / f"{name}.log", supervise=True)
            self.servers[name] = server
        threads = [threading.Thread(target=s.start, kwargs={"timeout_s": 240}) for s in self.servers.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        not_ready = [n for n, s in self.servers.items() if not s.is_ready()]
        if not_ready:
            raise RuntimeError(f"replicas not ready: {not_ready}; see {self.workdir}")
        replicas = [Replica(n, s.ports["http"], s.ports["grpc"]) for n, s in self.servers.items()]
        check = HealthCheck(f"/v2/models/{ensemble_name(self.settings.net)}/ready")
        self.balancer = HAProxy(replicas, check, self.workdir / "haproxy").start()
        for name in names:
            if self.balancer.wait_status(name, "UP", 30) is None:
                raise RuntimeError(f"haproxy never saw {name} UP: {self.balancer.servers()[name]}")
        targets = {n: s.ports["metrics"] for n, s in self.servers.items()}
        self.prometheus = Prometheus(targets, recording_rule(), self.workdir / "prometheus").start()
        return self

    def stop(self) -> None:
        for part in (self.prometheus, self.balancer):
            if part is not None:
                part.stop()
        for server in self.servers.values():
            server.stop()

    def kill_tritonserver(self, name: str) -> int:
        """SIGKILL the tritonserver of replica ``name`` (the child of its supervisor, which
        restarts it); returns the PID killed."""
        supervisor = self.servers[name].process
        assert supervisor is not None
        (pid,) = children(supervisor.pid)
        os.kill(pid, signal.SIGKILL)
        return pid


def perf_point(
    url: str, protocol: str, concurrency: int, model: str, input_data: Path, log: Path, measurement_ms: int = 4000, attempts: int = 3
) -> analyzer.ServedPoint:
    """One perf_analyzer level. Through the balancer perf_analyzer now and then stops with
    "failed to find the requested model version": it reads the server's statistics before and
    after each window, and each read may reach another replica. Its throughput and latency are
    measured at the client and hold; a failed run is repeated, up to ``attempts`` times."""
    settings = analyzer.SweepSettings(
        concurrency=(concurrency,), batch=1, measurement_ms=measurement_ms, stability_percent=15, max_trials=6
    )
    csv_path = log.with_suffix(".csv")
    for attempt in range(1, attempts + 1):
        try:
            analyzer.run(analyzer.command(model, url, protocol, concurrency, csv_path, input_data, settings), log)
            break
        except analyzer.AnalyzerError:
            if attempt == attempts:
                raise
            log.rename(log.with_suffix(f".failed{attempt}.log"))
    (point,) = analyzer.parse_csv(csv_path.read_text())
    return point


def signal_under_load(cluster: Cluster, concurrency: int, model: str, input_data: Path, settings: Settings, log: Path) -> dict[str, Any]:
    """perf_analyzer at ``concurrency`` through the balancer for ``signal_load_s``; the
    recorded queue time per pod is read while the load still runs."""
    assert cluster.balancer is not None and cluster.prometheus is not None
    # three windows that always count as stable: the load lasts about signal_load_s
    window_ms = int(settings.signal_load_s * 1000 / 3)
    sweep = analyzer.SweepSettings(concurrency=(concurrency,), batch=1, measurement_ms=window_ms, stability_percent=100, max_trials=3)
    cmd = analyzer.command(model, cluster.balancer.http_url, "http", concurrency, log.with_suffix(".csv"), input_data, sweep)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=analyzer.analyzer_env(), start_new_session=True)
        try:
            time.sleep(settings.signal_load_s - 2)
            running = proc.poll() is None
            per_pod = cluster.prometheus.recorded()
        finally:
            try:
                proc.wait(settings.signal_load_s + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if not running:
        raise RuntimeError(f"perf_analyzer stopped before the signal was read: {log.read_text()[-1500:]}")
    points = analyzer.parse_csv(log.with_suffix(".csv").read_text()) if log.with_suffix(".csv").exists() else []
    row = {"concurrency": concurrency, "queue_us_per_pod": per_pod, "infer_per_s": points[0].infer_per_s if points else None}
    if proc.returncode != 0:  # the signal was read under load; say why the throughput is missing
        row["perf_analyzer_error"] = log.read_text(errors="replace").strip().splitlines()[-1]
    return row


def hpa_view(sample: dict[str, Any], target: float, bounds: tuple[int, int], current: int) -> dict[str, Any]:
    values = list(sample["queue_us_per_pod"].values())
    average = sum(values) / len(values) if values else 0.0
    return {**sample, "average_us": round(average, 1), "hpa_desired_replicas": desired_replicas(current, average, target, bounds)}


def failover(cluster: Cluster, photos: list[Path], settings: Settings, workdir: Path) -> dict[str, Any]:
    balancer = cluster.balancer
    assert balancer is not None
    victim = list(cluster.servers)[-1]
    marks: dict[str, float] = {}

    def kill() -> None:
        marks["kill_wall"] = time.time()
        marks["kill"] = time.monotonic()
        marks["pid"] = cluster.kill_tritonserver(victim)
        down = balancer.wait_status(victim, "DOWN", 30, poll_s=0.02)
        marks["down_s"] = -1.0 if down is None else time.monotonic() - marks["kill"]

    run, _ = classify(
        client_command(balancer.http_url, photos, "http", settings),
        workdir / "failover.jsonl",
        len(photos),
        settings.trigger_fraction,
        kill,
    )
    up = balancer.wait_status(victim, "UP", 180)
    recovered_s = None if up is None else time.monotonic() - marks["kill"]
    after_kill = [line for line in balancer.log() if line.time_s >= marks["kill_wall"] - 1.0 and line.backend == HTTP_BACKEND]
    retried = [line for line in after_kill if line.retries > 0]
    failed = [line for line in after_kill if line.status >= 500 or line.status < 0]
    last_retry = max((line.time_s - marks["kill_wall"] for line in retried), default=None)
    return {
        "run": run,
        "victim": victim,
        "stale_routing_s": round(marks["down_s"], 3) if marks["down_s"] >= 0 else None,
        "last_retried_request_s": None if last_retry is None else round(last_retry, 3),
        "balancer_retried_requests": len(retried),
        "balancer_failed_requests": len(failed),
        "recovered_s": None if recovered_s is None else round(recovered_s, 1),
    }


def drain(cluster: Cluster, photos: list[Path], settings: Settings, workdir: Path) -> dict[str, Any]:
    balancer = cluster.balancer
    assert balancer is not None
    name = list(cluster.servers)[0]
    server = cluster.servers[name]
    marks: dict[str, Any] = {}

    def take_out() -> None:
        start = time.monotonic()
        marks["in_flight_at_drain"] = sum(int(balancer.servers(b)[name]["scur"] or 0) for b in (HTTP_BACKEND, GRPC_BACKEND))
        balancer.set_state(name, "drain")  # Kubernetes: readiness fails / endpoint removed
        while any(int(balancer.servers(b)[name]["scur"] or 0) for b in (HTTP_BACKEND, GRPC_BACKEND)):
            if time.monotonic() - start > 30:
                break
            time.sleep(0.02)
        marks["in_flight_finished_s"] = round(time.monotonic() - start, 3)
        # out of service altogether: HAProxy closes its idle connections to the replica, which
        # tritonserver's graceful stop would otherwise wait for until its exit timeout
        balancer.set_state(name, "maint")
        stop_start = time.monotonic()
        marks["exit_status"] = server.stop(timeout_s=60)  # SIGTERM to the supervisor, passed on
        marks["exit_s"] = round(time.monotonic() - stop_start, 2)

    run, _ = classify(
        client_command(balancer.http_url, photos, "http", settings, retries=0),
        workdir / "drain.jsonl",
        len(photos),
        settings.trigger_fraction,
        take_out,
    )
    return {"run": run, "replica": name, **marks}


def routing(cluster: Cluster, photos: list[Path], settings: Settings, workdir: Path) -> dict[str, Any]:
    """A few photos over each protocol through the balancer; which replicas answered."""
    balancer = cluster.balancer
    assert balancer is not None
    result = {}
    for protocol, url, backend in (("http", balancer.http_url, HTTP_BACKEND), ("grpc", balancer.grpc_url, GRPC_BACKEND)):
        before = {n: int(row["stot"] or 0) for n, row in balancer.servers(backend).items()}
        run, _ = classify(client_command(url, photos, protocol, settings), workdir / f"routing-{protocol}.jsonl", len(photos))
        after = {n: int(row["stot"] or 0) for n, row in balancer.servers(backend).items()}
        result[protocol] = {
            "classified": len(run.labels),
            "failed": len(run.errors),
            "requests_per_replica": {n: after[n] - before[n] for n in after},
        }
    return result


def knee(points: list[analyzer.ServedPoint], fraction: float = 0.9) -> analyzer.ServedPoint:
    """The lowest concurrency that reaches ``fraction`` of the best throughput of the sweep."""
    best = max(p.infer_per_s for p in points)
    return min((p for p in points if p.infer_per_s >= fraction * best), key=lambda p: p.concurrency)


def run_demo(settings: Settings, out: Path, workdir: Path, photos: list[Path], source: str) -> dict[str, Any]:
    """Run every step; returns the summary (also written to ``out/summary.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model = ensemble_name(settings.net)
    hpa = hpa_target()
    bounds = (hpa.min_replicas, hpa.max_replicas)
    summary: dict[str, Any] = {
        "replicas": settings.replicas,
        "photos": source,
        "machine": describe(),
        "balancer": "HAProxy " + haproxy_version(),
    }
    cluster = Cluster(settings, workdir).start()
    try:
        assert cluster.balancer is not None and cluster.prometheus is not None
        summary["routing"] = routing(cluster, photos[:16], settings, workdir)
        exposed = next(iter(cluster.servers.values())).metrics_text()
        rule_metrics = {name: f"\n{name}{{" in exposed for name in sorted(cluster.prometheus.rule.metrics())}
        cluster.prometheus.wait_evaluated(60)
        signal_rows: dict[str, Any] = {}
        if settings.quick:
            summary["perf_skipped"] = "quick run: no sweep, no throughput ratio, no signal under load"
        elif (reason := analyzer.unavailable_reason()) is not None:
            summary["perf_skipped"] = reason
        else:
            input_data = workdir / "input.json"
            input_data.write_text(json.dumps(analyzer.bytes_input_data([p.read_bytes() for p in photos[:32]], IMAGE_BYTES)))
            lb = cluster.balancer.http_url
            sweep = [perf_point(lb, "http", c, model, input_data, workdir / f"sweep-c{c}.log") for c in settings.sweep]
            k = knee(sweep)
            first = next(iter(cluster.servers.values()))
            direct = perf_point(first.http_url, "http", k.concurrency, model, input_data, workdir / "direct.log")
            through = perf_point(lb, "http", k.concurrency, model, input_data, workdir / "balancer.log")
            # the balancer's own overhead: the same replica, direct and through HAProxy alone
            others = [n for n in cluster.servers if n != next(iter(cluster.servers))]
            for name in others:
                cluster.balancer.set_state(name, "maint")
            alone = perf_point(lb, "http", k.concurrency, model, input_data, workdir / "balancer-one-replica.log")
            for name in others:
                cluster.balancer.set_state(name, "ready")
                cluster.balancer.wait_status(name, "UP", 30)
            grpc = perf_point(cluster.balancer.grpc_url, "grpc", k.concurrency, model, input_data, workdir / "balancer-grpc.log")
            summary["sweep"] = [
                {"concurrency": p.concurrency, "infer_per_s": round(p.infer_per_s, 1), "p99_ms": round(p.p99_ms, 1)} for p in sweep
            ]
            summary["knee_concurrency"] = k.concurrency
            summary["throughput"] = {
                "direct_one_replica_img_s": round(direct.infer_per_s, 1),
                "balancer_one_replica_img_s": round(alone.infer_per_s, 1),
                "balancer_one_replica_p99_ms": round(alone.p99_ms, 1),
                "balancer_all_replicas_img_s": round(through.infer_per_s, 1),
                "balancer_grpc_img_s": round(grpc.infer_per_s, 1),
                "direct_p99_ms": round(direct.p99_ms, 1),
                "balancer_p99_ms": round(through.p99_ms, 1),
            }
            summary["balancer_over_direct"] = round(alone.infer_per_s / direct.infer_per_s, 3)
            summary["balancer_all_replicas_over_direct"] = round(through.infer_per_s / direct.infer_per_s, 3)
            # idle: the rule's 30 s rate window, its 10 s evaluation and a scrape all past the last load
            time.sleep(50)
            signal_rows["idle"] = {"concurrency": 0, "queue_us_per_pod": cluster.prometheus.recorded(), "infer_per_s": 0.0}
            signal_rows["knee"] = signal_under_load(cluster, k.concurrency, model, input_data, settings, workdir / "signal-knee.log")
            signal_rows["overload"] = signal_under_load(
                cluster, 4 * k.concurrency, model, input_data, settings, workdir / "signal-overload.log"
            )
        if not signal_rows:
            signal_rows["idle"] = {"concurrency": 0, "queue_us_per_pod": cluster.prometheus.recorded(), "infer_per_s": None}
        recommended = _round2(max(signal_rows["knee"]["queue_us_per_pod"].values())) if "knee" in signal_rows else None
        summary["autoscaling"] = {
            "metric": hpa.metric,
            "recording_rule": cluster.prometheus.rule.record,
            "manifest_target_us": hpa.target,
            "recommended_target_us": recommended,
            "rule_metrics_on_server": rule_metrics,
            **{name: hpa_view(row, hpa.target, bounds, settings.replicas) for name, row in signal_rows.items()},
        }
        failed_over = failover(cluster, photos, settings, workdir)
        fo_run: ClientRun = failed_over.pop("run")
        drained = drain(cluster, photos, settings, workdir)
        dr_run: ClientRun = drained.pop("run")
    finally:
        cluster.stop()
    both = set(fo_run.labels) & set(dr_run.labels)
    summary.update(
        {
            "images": fo_run.sent,
            "classified": len(fo_run.labels),
            "failed_listed": len(fo_run.errors),
            "lost": fo_run.lost,
            "answered_twice": fo_run.duplicates,
            "label_mismatches_between_runs": sum(fo_run.labels[p] != dr_run.labels[p] for p in both),
            "failover_client_s": round(fo_run.seconds, 1),
            **{k: v for k, v in failed_over.items()},
            "drain_errors": len(dr_run.errors) + dr_run.lost + dr_run.duplicates,
            "drain": {**drained, "images": dr_run.sent, "classified": len(dr_run.labels), "client_exit_status": dr_run.exit_status},
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _round2(value: float) -> float:
    """Two significant figures, at least 1 (a target of 0 would scale on any queueing)."""
    if value <= 1:
        return 1.0
    digits = len(str(int(value))) - 2
    return float(round(value, -digits)) if digits > 0 else float(round(value))


def haproxy_version() -> str:
    proc = subprocess.run(["haproxy", "-v"], capture_output=True, text=True)
    first = proc.stdout.splitlines()[0] if proc.stdout else "?"
    return first.split()[2] if len(first.split()) > 2 else first
