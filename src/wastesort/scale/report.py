"""The Markdown tables of ``docs/scale-out.md`` from a scale-demo summary (``summary.json``)."""

from __future__ import annotations

from typing import Any

from wastesort.machine import one_line
from wastesort.scale.manifests import desired_replicas, hpa_target

MARKERS = ("<!-- scale-demo-results:begin -->", "<!-- scale-demo-results:end -->")


def _v(value: Any, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def tables(s: dict[str, Any]) -> str:
    """Throughput, failover, drain and autoscaling-signal tables, with the machine."""
    lines = [
        f"Measured by `make scale-demo` on {one_line(s['machine'])}: {s['replicas']} tritonserver replicas and "
        f"{s['balancer']} on the same cores, {s['photos']}, {s['seconds']} s in all.",
        "",
        "**Routing** (16 photos, one per request, through the balancer; the calls each replica served include the client's "
        "readiness and metadata calls):",
        "",
        "| protocol | classified | failed | calls per replica |",
        "|---|---|---|---|",
    ]
    for protocol, row in s["routing"].items():
        per = ", ".join(f"{n}: {c}" for n, c in row["requests_per_replica"].items())
        lines.append(f"| {protocol} | {row['classified']} | {row['failed']} | {per} |")
    lines += ["", "**Throughput** (perf_analyzer, one JPEG per request, HTTP):", ""]
    if "throughput" in s:
        t = s["throughput"]
        sweep = ", ".join(f"c{p['concurrency']}: {p['infer_per_s']}" for p in s["sweep"])
        lines += [
            "| path | concurrency | img/s | p99 ms |",
            "|---|---|---|---|",
            f"| one replica direct | {s['knee_concurrency']} | {t['direct_one_replica_img_s']} | {t['direct_p99_ms']} |",
            f"| balancer, the same replica alone | {s['knee_concurrency']} | {t['balancer_one_replica_img_s']} "
            f"| {t['balancer_one_replica_p99_ms']} |",
            f"| balancer, {s['replicas']} replicas | {s['knee_concurrency']} "
            f"| {t['balancer_all_replicas_img_s']} | {t['balancer_p99_ms']} |",
            f"| balancer, gRPC | {s['knee_concurrency']} | {t['balancer_grpc_img_s']} | |",
            "",
            f"`balancer_over_direct` (the same replica through HAProxy over direct) = **{s['balancer_over_direct']}**; "
            f"{s['replicas']} replicas through the balancer over one direct: {s['balancer_all_replicas_over_direct']} "
            f"(the replicas share the same cores). Sweep through the balancer (img/s): {sweep}; "
            f"knee (90% of the best) at concurrency {s['knee_concurrency']}.",
        ]
    else:
        lines.append(f"Not measured: {s.get('perf_skipped')}.")
    d = s["drain"]
    lines += [
        "",
        "**Failover** (the client classifies the photos through the balancer over HTTP; the tritonserver of "
        f"{s['victim']} gets SIGKILL after a quarter of them):",
        "",
        "| images | classified | failed, listed | lost | answered twice | labels differing from the drain run "
        "| stale routing | last retried request | retried by the balancer | failed at the balancer | back in service |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {s['images']} | {s['classified']} | {s['failed_listed']} | {s['lost']} | {s['answered_twice']} | "
        f"{s['label_mismatches_between_runs']} | {_v(s['stale_routing_s'], ' s')} | {_v(s['last_retried_request_s'], ' s')} | "
        f"{s['balancer_retried_requests']} | {s['balancer_failed_requests']} | {_v(s['recovered_s'], ' s')} |",
        "",
        f"**Drain** ({d['replica']} taken out of the balancer with {d.get('in_flight_at_drain')} requests in flight, "
        "then SIGTERM; the client's retries off):",
        "",
        "| images | classified | errors | in-flight finished after | exit status | exit took |",
        "|---|---|---|---|---|---|",
        f"| {d['images']} | {d['classified']} | {s['drain_errors']} | {_v(d.get('in_flight_finished_s'), ' s')} | "
        f"{_v(d.get('exit_status'))} | {_v(d.get('exit_s'), ' s')} |",
    ]
    a = s["autoscaling"]
    lines += [
        "",
        f"**Autoscaling signal** (`{a['recording_rule']}` from the manifests' recording rule, read from Prometheus; "
        f"the HPA's replicas for {s['replicas']} running, target {a['manifest_target_us']:.0f} µs):",
        "",
        "| load | concurrency | img/s | queue µs per request, per replica | average | HPA asks for | at the recommended target |",
        "|---|---|---|---|---|---|---|",
    ]
    hpa = hpa_target()
    recommended = a.get("recommended_target_us")
    for name in ("idle", "knee", "overload"):
        if name in a:
            row = a[name]
            per = ", ".join(f"{p}: {v:.0f}" for p, v in sorted(row["queue_us_per_pod"].items()))
            ips = "" if row["infer_per_s"] is None else f"{row['infer_per_s']:.1f}"
            at_recommended = (
                ""
                if recommended is None
                else desired_replicas(s["replicas"], row["average_us"], recommended, (hpa.min_replicas, hpa.max_replicas))
            )
            cells = [name, row["concurrency"], ips, per, f"{row['average_us']:.0f}", row["hpa_desired_replicas"], at_recommended]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    if a.get("recommended_target_us") is not None:
        lines += ["", f"Target the measurement suggests (the knee's queue time, two figures): {a['recommended_target_us']:.0f} µs."]
    return "\n".join(lines) + "\n"
