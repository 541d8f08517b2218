"""The reliability report as one library call (``reliability/run.py``, ``make reliability``): the
bad-input matrix, a soak at the throughput knee and injected faults, each against real
supervised tritonservers on loopback (free ports, stopped by PID), written to
``reliability/results/<host>/`` and into the results section of ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from wastesort.machine import describe, host_name
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT, shown
from wastesort.reliability import faults
from wastesort.reliability import images as im
from wastesort.reliability.probes import Target, run_matrix
from wastesort.reliability.report import faults_table, matrix_table, soak_table, update_doc
from wastesort.reliability.soak import SoakResult, soak
from wastesort.shipped import DEFAULT_NET
from wastesort.triton.naming import classifier_name, ensemble_name
from wastesort.triton.server import MODEL_REPOSITORY, TritonServer
from wastesort.triton.supervise import remove_region

#: The page whose results section the report replaces.
DOC = REPO_ROOT / "docs" / "reliability.md"


@dataclass
class ReliabilitySettings:
    """The report's options (``reliability/run.py``'s flags); ``out`` defaults to
    ``reliability/results/<host>``. ``batch`` and ``concurrency`` are the soak's: the knee
    ``make perf`` finds on a 2-core CPU."""

    net: str = DEFAULT_NET
    repository: Path = MODEL_REPOSITORY
    data: Path = DEFAULT_TRASHNET
    soak_minutes: float = 10.0
    protocol: str = "http"
    batch: int = 8
    concurrency: int = 2
    out: Path | None = None
    no_doc: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out or REPO_ROOT / "reliability" / "results" / host_name())


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def one_request_ok(server: TritonServer, model: str) -> str:
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[im.encode(im.photo(), "JPEG")]], dtype=np.object_))
    try:
        client.infer(model, [tensor])
        return "answered"
    except InferenceServerException as exc:
        return f"failed: {exc.message()}"


def instance_deaths(settings: ReliabilitySettings, out: Path) -> list[dict[str, str]]:
    rows = []
    ensemble = ensemble_name(settings.net)
    with TritonServer(settings.repository, log_path=out / "server-instance-death.log", supervise=True) as srv:
        for model in ("preprocess", classifier_name(settings.net)):
            instance = f"{model}_0_0"
            faults.wait_for_log(srv, f"watching Python-backend instance {instance}")
            stub = faults.stubs(srv)[instance]
            mark = len(faults.log_text(srv))
            t0 = time.monotonic()
            faults.kill(stub.pid)
            rec = faults.watch_readiness(srv)
            logged = f"instance {instance} of model '{model}' (stub pid {stub.pid}) died" in faults.log_text(srv)[mark:]
            deaths = faults.metric_values(srv, "wastesort_instance_deaths")
            after = one_request_ok(srv, ensemble)
            rows.append(
                {
                    "fault": f"`kill -9` of the Python-backend stub of `{model}` ({instance}), supervised server",
                    "server": (
                        f"supervisor logged the death: {'yes' if logged else 'NO'}; /v2/health/ready false from "
                        f"{_s(rec.first_not_ready_s)} to {_s(rec.ready_again_s)} after the kill (restart); metrics then show "
                        + ", ".join(f"wastesort_instance_deaths{k} {v:g}" for k, v in deaths.items())
                    ),
                    "client": f"refused during the restart; request after it: {after}",
                    "survived": "yes" if logged and rec.ready_again_s and after == "answered" else "**no**",
                }
            )
            print(f"instance death {model}: {rows[-1]['server']} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    return rows


def bare_instance_death(settings: ReliabilitySettings, out: Path) -> dict[str, str]:
    """What Triton 2.51 itself does when a stub dies (why the supervisor exists)."""
    ensemble = ensemble_name(settings.net)
    with TritonServer(settings.repository, log_path=out / "server-bare-instance-death.log") as srv:
        assert srv.process is not None
        stub = next(s for pid in faults.children(srv.process.pid) if (s := faults.read_stub(pid)) and s.model == "preprocess")
        faults.kill(stub.pid)
        time.sleep(3)
        client = httpclient.InferenceServerClient(srv.http_url)
        ready = client.is_server_ready() and client.is_model_ready("preprocess")
        answers = [one_request_ok(srv, ensemble) for _ in range(3)]
        failures = faults.metric_values(srv, "nv_inference_request_failure")
        backend = {k: v for k, v in failures.items() if 'model="preprocess"' in k and "BACKEND" in k}
        logged = "died" in faults.log_text(srv) or "not healthy" in faults.log_text(srv)
    leaked = remove_region(stub)  # a bare server leaves it; nothing else would clean it up
    return {
        "fault": "`kill -9` of the `preprocess` stub, bare Triton 2.51 (`--no-supervise`)",
        "server": (
            f"server and model still ready 3 s later: {'yes' if ready else 'no'}; anything in the log at default verbosity: "
            f"{'yes' if logged else 'no'}; failures counted as "
            + ", ".join(f"nv_inference_request_failure{k} {v:g}" for k, v in backend.items())
            + f"; the dead stub's /dev/shm region left behind after shutdown: {'yes (removed by this harness)' if leaked else 'no'}"
        ),
        "client": f"every request: {answers[-1]}",
        "survived": "no: the model stays READY and fails every request until restarted (what the supervisor fixes)",
    }


def client_runs(settings: ReliabilitySettings, out: Path, paths: list[Path]) -> list[dict[str, str]]:
    rows = []
    common = ["--batch-size", "4", "--concurrency", "2"]
    for protocol in ("http", "grpc"):
        with TritonServer(settings.repository, log_path=out / f"server-kill-{protocol}.log", supervise=True) as srv:
            pid = faults.triton_pid(srv)
            url = srv.http_url if protocol == "http" else srv.grpc_url
            run = faults.run_client_with_fault(url, protocol, paths, lambda pid=pid: faults.kill(pid), len(paths) // 4, common)
            restart = faults.supervisor_restart_reason(srv)
            rows.append(
                _client_row(
                    f"`kill -9` of tritonserver after {run.fault_at_result} of {len(paths)} results ({protocol})",
                    run,
                    f"the supervisor restarted it (logged: {restart})" if restart else "not restarted",
                )
            )
    with TritonServer(settings.repository, log_path=out / "server-freeze.log", supervise=True) as srv:
        pid = faults.triton_pid(srv)

        def freeze() -> None:
            faults.kill(pid, signal.SIGSTOP)
            time.sleep(5)
            faults.kill(pid, signal.SIGCONT)

        run = faults.run_client_with_fault(srv.grpc_url, "grpc", paths, freeze, len(paths) // 4, [*common, "--timeout", "1"])
        rows.append(
            _client_row("tritonserver frozen (SIGSTOP) for 5 s mid-run, client `--timeout 1` (grpc)", run, "continued after SIGCONT")
        )
    with TritonServer(settings.repository, log_path=out / "server-gone.log", supervise=True) as srv:
        with faults.server_gone_for_good(srv) as gone:
            run = faults.run_client_with_fault(srv.http_url, "http", paths, gone, len(paths) // 4, [*common, "--retries", "3"])
        rows.append(
            _client_row("tritonserver killed and not restarted (supervisor paused), client `--retries 3` (http)", run, "stayed down")
        )
    return rows


def _client_row(fault: str, run: faults.ClientRun, server: str) -> dict[str, str]:
    retried = next((line for line in run.stderr.splitlines() if "classified" in line), run.stderr.strip()[-200:])
    failed = run.failed
    reasons = sorted({r["error"].split(":")[0] for r in failed})
    client = f"{retried.strip()}; exit {run.returncode}" + (f"; failed ones: {', '.join(reasons)}" if failed else "")
    survived = (
        "yes: every input classified"
        if run.accounted_for() and not failed
        else (f"no loss: {len(failed)} listed as failed, {run.classified} classified" if run.accounted_for() else "**results lost**")
    )
    return {"fault": fault, "server": server, "client": client, "survived": survived}


def plot(results: list[SoakResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, lat) = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in results:
        t, mb = np.array(r.memory).T
        mem.plot(t / 60, mb, label=f"{r.protocol} b{r.batch} c{r.concurrency}")
        lat_t = np.linspace(0, r.duration_s / 60, len(r.latencies_ms))
        lat.plot(lat_t, r.latencies_ms, ",", alpha=0.5)
    mem.axvline(results[0].duration_s * results[0].warmup_fraction / 60, color="grey", ls=":", label="end of warm-up")
    mem.set(xlabel="minutes", ylabel="tritonserver + stubs RSS (MB)", title="server memory")
    lat.set(xlabel="minutes", ylabel="request latency (ms)", title="latency of every request", yscale="log")
    mem.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_reliability(settings: ReliabilitySettings) -> bool:
    """Run the matrix, the soak and the faults, write the results (and the doc's section);
    returns whether everything held: no bad input mishandled, no soak error, flat memory."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    paths, source = im.photo_files(settings.data, out, 256)
    payloads = [p.read_bytes() for p in paths]
    ensemble = ensemble_name(settings.net)

    with TritonServer(settings.repository, log_path=out / "server-matrix-soak.log", supervise=True) as srv:
        target = Target.from_server(srv.http_url, settings.net)
        matrix = {p: run_matrix(srv.http_url if p == "http" else srv.grpc_url, p, target) for p in ("http", "grpc")}
        bad = [f"{p} {o.probe.name}: {o.why}" for p, outs in matrix.items() for o in outs if not o.passed]
        print(f"bad-input matrix: {sum(len(v) for v in matrix.values()) - len(bad)} passed, {len(bad)} failed", file=sys.stderr)
        url = srv.http_url if settings.protocol == "http" else srv.grpc_url
        result = soak(
            url,
            settings.protocol,
            ensemble,
            payloads,
            settings.batch,
            settings.concurrency,
            settings.soak_minutes * 60,
            lambda: faults.server_processes(srv),
        )
        print(f"soak: {result.summary()}", file=sys.stderr)
        restarted = "restarting tritonserver" in faults.log_text(srv)
    fault_rows = instance_deaths(settings, out) + [bare_instance_death(settings, out)] + client_runs(settings, out, paths[:160])
    plot([result], out / "soak.png")

    machine = describe()
    report = "\n\n".join(
        [
            f"Measured on `{machine['host']}` ({machine['cpu']}, {machine['usable_cores']} cores) with {source}; "
            f"repository `{shown(settings.repository)}` "
            f"(limits: {target.max_pixels} pixels, {target.max_image_bytes} bytes per image, {target.max_batch_size} images per request); "
            f"`python reliability/run.py --soak-minutes {settings.soak_minutes:g}`, {time.strftime('%Y-%m-%d')}.",
            "### Bad input\n\n" + matrix_table(matrix),
            "### Sustained load\n\n"
            + soak_table([result])
            + ("\n\nThe supervisor restarted the server during the soak." if restarted else "")
            + "\n\n![memory and latency over the soak](../reliability/results/"
            + out.name
            + "/soak.png)",
            "### Faults\n\n" + faults_table(fault_rows),
        ]
    )
    (out / "report.md").write_text(report + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "photos": source,
                "matrix": {
                    p: [{"probe": o.probe.name, "passed": o.passed, "status": o.status, "message": o.message} for o in v]
                    for p, v in matrix.items()
                },
                "soak": result.summary(),
                "faults": fault_rows,
            },
            indent=2,
        )
    )
    if not settings.no_doc and not update_doc(DOC, report):
        print(f"warning: no result markers in {DOC}; not updated", file=sys.stderr)
    print(f"wrote {out}/report.md", file=sys.stderr)
    return not bad and result.errors == 0 and result.memory_holds
