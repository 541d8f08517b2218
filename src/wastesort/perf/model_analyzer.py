"""Triton Model Analyzer driving this project's CPU server: its tool environment, its input
repository, its config, and its results.

Model Analyzer (``triton-model-analyzer`` on PyPI) pins its own dependencies (optuna 3.6,
tritonclient 2.73, whose perf_analyzer needs glibc 2.38), so it lives in its own environment
(:data:`ANALYZER_VENV`) and is pointed at the tools of the project's: the ``tritonserver`` of
nvidia-pytriton (``local`` launch mode: Model Analyzer starts and stops it per configuration,
with :func:`wastesort.triton.server.server_env`'s environment) and the project's
perf_analyzer 2.50 (with :func:`wastesort.perf.analyzer.analyzer_env`'s library path).

It profiles one ensemble with every composing model on the CPU (``cpu_only``), varying the
composing models' instance counts, ``max_batch_size`` and queue delays (:class:`Search`), and measures each
configuration over a concurrency sweep with real JPEG bytes (``--input-data``). Its own pick
is the configuration of highest throughput within the p99 budget (its ``constraints``).
"""

from __future__ import annotations

import csv
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format

from wastesort.paths import REPO_ROOT
from wastesort.perf.analyzer import ServedPoint, SweepSettings, analyzer_env, best_within, perf_analyzer_binary, sweep
from wastesort.triton.config import parse_config
from wastesort.triton.server import TritonServer, backend_directory, server_env, tritonserver_binary

#: The tool environment (gitignored) and what ``make model-analyzer`` installs into it.
ANALYZER_VENV = REPO_ROOT / ".venv-analyzer"
ANALYZER_PACKAGE = "triton-model-analyzer==1.58.0"
#: Model Analyzer's table of every measured configuration, under its export path.
INFERENCE_CSV = Path("results") / "metrics-model-inference.csv"
#: Suffix Model Analyzer gives the unchanged configuration it measures first.
DEFAULT_CONFIG_SUFFIX = "_config_default"


#: The configurations served side by side: the project's, Model Analyzer's pick, and the
#: project's batching with the pick's instance counts (the pick may cap the ensemble's
#: ``max_batch_size``, which would refuse the multi-image requests the service takes).
HAND_TUNED = "hand-tuned"
PICK = "Model Analyzer's pick"
PICK_INSTANCES = "hand-tuned + pick's instances"


class ModelAnalyzerError(RuntimeError):
    """Model Analyzer is not installed or a run failed; the message says how and where."""


def binary() -> Path:
    """The ``model-analyzer`` entry point of :data:`ANALYZER_VENV`."""
    return ANALYZER_VENV / "bin" / "model-analyzer"


def unavailable_reason() -> str | None:
    """None when Model Analyzer runs here, else one line saying what to install."""
    if not binary().is_file():
        return f"Model Analyzer is not installed in {ANALYZER_VENV} (make model-analyzer creates it: pip install {ANALYZER_PACKAGE})"
    return None


def composing_models(repository: Path, ensemble: str) -> list[str]:
    """The models the ensemble's steps call, in step order."""
    cfg = parse_config(repository / ensemble / "config.pbtxt")
    return list(dict.fromkeys(step.model_name for step in cfg.ensemble_scheduling.step))


def prepare_repository(source: Path, target: Path, ensemble: str) -> list[str]:
    """Copy ``ensemble`` and its composing models from ``source`` to ``target`` (replaced) for
    Model Analyzer, which sets ``max_batch_size`` as low as 1: warm-up samples larger than
    batch 1 are dropped from the copies (Triton refuses to load a model whose warm-up exceeds
    its ``max_batch_size``). Everything else is copied as served. Returns the composing models.
    """
    composing = composing_models(source, ensemble)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for model in [ensemble, *composing]:
        shutil.copytree(source / model, target / model, symlinks=False)
        path = target / model / "config.pbtxt"
        cfg = parse_config(path)
        kept = [w for w in cfg.model_warmup if w.batch_size <= 1]
        del cfg.model_warmup[:]
        cfg.model_warmup.extend(kept)
        path.write_text(text_format.MessageToString(cfg))
    return composing


@dataclass(frozen=True)
class Search:
    """Model Analyzer's search over the composing models, within these bounds, picks within
    ``p99_budget_ms``.

    ``optuna`` (the default): its Optuna search over each composing model's instance count,
    ``max_batch_size`` (powers of two) and dynamic-batching queue delay (``queue_delays_us``)
    and the concurrency, ``min_trials`` to ``max_trials`` configurations (it stops early after
    ``early_exit`` trials without a better one), then a concurrency sweep of the ``top``
    configurations. ``quick`` is its hill climb over instance counts and ``max_batch_size``
    (it cannot search queue delays; 1.58's can cycle without ending, which :func:`run` stops).
    """

    mode: str = "optuna"
    max_instances: int = 2
    max_batch_size: int = 64
    max_concurrency: int = 32
    p99_budget_ms: float = 100.0
    top: int = 3
    queue_delays_us: tuple[int, ...] = (0, 1000, 4000, 16000)
    min_trials: int = 20
    max_trials: int = 40
    early_exit: int = 10

    def describe(self) -> str:
        """One sentence for the report: what was searched and how."""
        searched = f"instance counts up to {self.max_instances}, `max_batch_size` up to {self.max_batch_size} with dynamic batching"
        if self.mode == "optuna":
            delays = ", ".join(map(str, self.queue_delays_us))
            return (
                f"`optuna` search ({self.min_trials}-{self.max_trials} trials, early exit after {self.early_exit} without a better one) "
                f"over each composing model's {searched}, queue delays {delays} µs, and concurrency up to {self.max_concurrency}, "
                f"then a concurrency sweep of its top {self.top}"
            )
        return f"`{self.mode}` search over each composing model's {searched}, concurrency up to {self.max_concurrency}"


def analyzer_config(
    repository: Path, ensemble: str, composing: list[str], workdir: Path, input_data: Path, ports: dict[str, int], search: Search
) -> dict:
    """Model Analyzer's YAML config (as a dict) for profiling ``ensemble`` on this CPU server."""
    # Model Analyzer gives this environment to the server and to perf_analyzer alike: the
    # server's libraries, and perf_analyzer's libcudart (no GPU is used)
    env = analyzer_env(server_env())
    config = {
        "model_repository": str(repository),
        "output_model_repository_path": str(workdir / "output_repository"),
        "override_output_model_repository": True,
        "export_path": str(workdir / "export"),
        "checkpoint_directory": str(workdir / "checkpoints"),
        "triton_launch_mode": "local",
        "triton_server_path": str(tritonserver_binary()),
        "triton_http_endpoint": f"127.0.0.1:{ports['http']}",
        "triton_grpc_endpoint": f"127.0.0.1:{ports['grpc']}",
        "triton_metrics_url": f"http://127.0.0.1:{ports['metrics']}/metrics",
        "triton_server_flags": {
            "backend-directory": str(backend_directory()),
            "http-address": "127.0.0.1",
            "grpc-address": "127.0.0.1",
            "metrics-address": "127.0.0.1",
            "pinned-memory-pool-byte-size": 0,
            "cuda-memory-pool-byte-size": "0:0",
        },
        "triton_server_environment": {"PATH": env["PATH"], "LD_LIBRARY_PATH": env["LD_LIBRARY_PATH"]},
        "perf_analyzer_path": str(perf_analyzer_binary() or "perf_analyzer"),
        "perf_analyzer_flags": {"input-data": str(input_data)},
        "gpus": [],
        "run_config_search_mode": search.mode,
        "run_config_search_max_instance_count": search.max_instances,
        "run_config_search_max_model_batch_size": search.max_batch_size,
        "run_config_search_max_concurrency": search.max_concurrency,
        "num_top_model_configs": search.top,
        "objectives": ["perf_throughput"],
        "constraints": {"perf_latency_p99": {"max": search.p99_budget_ms}},
        # lists, not mappings: Model Analyzer 1.58 parses the mapping forms of profile_models and
        # ensemble_composing_models into one shared object, and the second overwrites the first
        "profile_models": [{ensemble: {"cpu_only": True}}],
        "cpu_only_composing_models": composing,
    }
    if search.mode == "optuna":
        config |= {
            "optuna_min_trials": search.min_trials,
            "optuna_max_trials": search.max_trials,
            "optuna_early_exit_threshold": search.early_exit,
            # queue delays have no search range of their own: listed per composing model (its
            # instance count and max_batch_size keep their ranges above)
            "ensemble_composing_models": [
                {model: {"model_config_parameters": {"dynamic_batching": {"max_queue_delay_microseconds": list(search.queue_delays_us)}}}}
                for model in composing
            ],
        }
    return config


#: A line Model Analyzer logs when its search proposes a configuration it has already measured,
#: and one it logs when it measures a new one.
REVISIT_LINE = "Existing measurement found for run config"
MEASURE_LINE = "Profiling "
#: Revisits in a row, with no new measurement between them, after which a run is stopped: Model
#: Analyzer's quick search can cycle over measured configurations without ending; a converging
#: search revisits a few at a time.
MAX_REVISITS = 1000


def _progress(log: Path, offset: int, revisits: int) -> tuple[int, int]:
    """Read ``log`` from ``offset``: (the new offset, revisits in a row since the last new
    measurement), counting on from ``revisits``."""
    with open(log, "rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.decode(errors="replace").splitlines():
        if MEASURE_LINE in line:
            revisits = 0
        elif REVISIT_LINE in line:
            revisits += 1
    return offset + len(complete), revisits


def _interruptible() -> None:
    """In the child before exec: SIGINT back to its default. A caller started in the background
    (``make model-analyzer &``, ``nohup``) has SIGINT ignored, exec keeps that, and the interrupt
    that stops a cycling search would then be lost until the kill a minute later."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(args: list[str], log: Path, env: dict[str, str], timeout_s: float, max_revisits: int = MAX_REVISITS, poll_s: float = 2.0) -> None:
    """Run ``model-analyzer <args>``, its output to ``log``; :class:`ModelAnalyzerError` with
    the end of the log when it fails, runs past ``timeout_s``, or revisits measured
    configurations ``max_revisits`` times in a row (it is then interrupted, as Ctrl-C would, and
    killed if it has not stopped within a minute)."""
    cmd = [str(binary()), *args]
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        offset, revisits, code = log.stat().st_size, 0, None
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_interruptible)
        try:
            deadline = time.monotonic() + timeout_s
            while (code := proc.poll()) is None:
                offset, revisits = _progress(log, offset, revisits)
                if revisits >= max_revisits or time.monotonic() > deadline:
                    break
                time.sleep(poll_s)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if code is None:
        code = (
            f"its search cycling: {revisits} revisits of measured configurations in a row, no new measurement"
            if revisits >= max_revisits
            else f"a timeout after {timeout_s:.0f} s"
        )
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ModelAnalyzerError(f"model-analyzer {args[0]} ended with {code}:\n{tail}")


@dataclass(frozen=True)
class Measured:
    """One row of Model Analyzer's inference table: a configuration at one concurrency.
    ``config`` is the ensemble's configuration, ``composing`` those of its models (in the
    ensemble's step order, as are ``instances`` and ``max_batch_sizes``)."""

    config: str
    composing: tuple[str, ...]
    instances: str
    max_batch_sizes: str
    concurrency: int
    throughput: float
    p99_ms: float
    queue_delays_us: tuple[int, ...] = ()

    @property
    def is_default(self) -> bool:
        return self.config.endswith(DEFAULT_CONFIG_SUFFIX)


def read_results(export_path: Path) -> list[Measured]:
    """Model Analyzer's inference table (``results/metrics-model-inference.csv``)."""
    path = export_path / INFERENCE_CSV
    if not path.is_file():
        raise ModelAnalyzerError(f"Model Analyzer wrote no results table at {path}")
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            config, _, composing = row["Model Config Path"].partition(":")
            rows.append(
                Measured(
                    config=config.strip(),
                    composing=tuple(c.strip() for c in composing.split(",") if c.strip()),
                    instances=row["Instance Group"],
                    max_batch_sizes=row["Max Batch Size"],
                    concurrency=int(float(row["Concurrency"])),
                    throughput=float(row["Throughput (infer/sec)"]),
                    p99_ms=float(row["p99 Latency (ms)"]),
                )
            )
    return rows


def with_queue_delays(rows: list[Measured], output_repository: Path) -> list[Measured]:
    """``rows`` with each composing model's dynamic-batching queue delay (µs), read from the
    configurations Model Analyzer wrote (the inference table does not have them); a row whose
    configurations are not all there keeps none."""
    out = []
    for row in rows:
        paths = [output_repository / c / "config.pbtxt" for c in row.composing]
        if paths and all(p.is_file() for p in paths):
            delays = tuple(parse_config(p).dynamic_batching.max_queue_delay_microseconds for p in paths)
            row = replace(row, queue_delays_us=delays)
        out.append(row)
    return out


def best_per_config(rows: list[Measured], p99_budget_ms: float) -> list[Measured]:
    """Each configuration's highest-throughput row within the budget, fastest first (Model
    Analyzer's own ranking for a throughput objective under a p99 constraint)."""
    best: dict[str, Measured] = {}
    for row in rows:
        if row.p99_ms <= p99_budget_ms and (row.config not in best or row.throughput > best[row.config].throughput):
            best[row.config] = row
    return sorted(best.values(), key=lambda r: r.throughput, reverse=True)


def pick_repository(prepared: Path, output_repository: Path, pick: Measured, ensemble: str, target: Path) -> None:
    """``prepared`` (as :func:`prepare_repository` wrote it) with the ensemble's and composing
    models' configs replaced by those of Model Analyzer's ``pick`` (its output repository
    names each ``<model>_config_<n>``; the model's own name is inside)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(prepared, target)
    for folder in [pick.config, *pick.composing]:
        cfg = parse_config(output_repository / folder / "config.pbtxt")
        if not (target / cfg.name).is_dir():
            raise ModelAnalyzerError(f"{folder} configures {cfg.name!r}, which is not in {prepared} (ensemble {ensemble})")
        (target / cfg.name / "config.pbtxt").write_text(text_format.MessageToString(cfg))


def with_instances(prepared: Path, picked: Path, target: Path) -> None:
    """``prepared`` with each model's instance counts taken from ``picked`` (everything else,
    ``max_batch_size`` included, as hand-tuned)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(prepared, target)
    for folder in target.iterdir():
        cfg = parse_config(folder / "config.pbtxt")
        source = parse_config(picked / folder.name / "config.pbtxt")
        del cfg.instance_group[:]
        cfg.instance_group.extend(source.instance_group)
        (folder / "config.pbtxt").write_text(text_format.MessageToString(cfg))


def batch_capacity(repository: Path, ensemble: str) -> int:
    """The largest request (images) the ensemble of ``repository`` accepts."""
    return parse_config(repository / ensemble / "config.pbtxt").max_batch_size


def describe(pick: Measured) -> str:
    """'preprocess_config_0 + x_config_1: instances 1,2, max_batch_size 1,1[, queue delay 0,4000 µs]'
    (step order)."""
    instances = ",".join(i.split(":")[0] for i in pick.instances.split(","))
    delays = f", queue delay {','.join(map(str, pick.queue_delays_us))} µs" if pick.queue_delays_us else ""
    return f"{' + '.join(pick.composing)}: instances {instances}, max_batch_size {pick.max_batch_sizes}{delays}"


@dataclass(frozen=True)
class Compared:
    """One configuration's best point within the budget in one round of the side-by-side run."""

    label: str
    protocol: str
    round: int
    point: ServedPoint | None
    error: str = ""


def compare(
    repositories: dict[str, Path],
    ensemble: str,
    input_data: Path,
    levels: list[int],
    settings: SweepSettings,
    p99_budget_ms: float,
    rounds: int,
    raw: Path,
    protocols: tuple[str, ...] = ("http", "grpc"),
) -> list[Compared]:
    """Serve each repository in turn (a fresh tritonserver on free loopback ports each time,
    ``rounds`` times, alternating, so that the machine's drift falls on both) and sweep the
    ensemble with perf_analyzer over ``levels`` on each protocol."""
    results = []
    for n in range(rounds):
        for label, repository in repositories.items():
            folder = raw / f"round{n}_{label.replace(' ', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            with TritonServer(repository, log_path=folder / "tritonserver.log") as server:
                for protocol in protocols:
                    url = server.grpc_url if protocol == "grpc" else server.http_url
                    points, error = sweep(ensemble, url, protocol, levels, input_data, settings, folder, stop_past_ms=3 * p99_budget_ms)
                    results.append(Compared(label, protocol, n, best_within(points, p99_budget_ms), error))
    return results


def medians(results: list[Compared]) -> dict[tuple[str, str], float]:
    """Median over rounds of the best throughput within the budget, per (label, protocol);
    a round without a point within the budget counts as 0."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in results:
        groups.setdefault((r.label, r.protocol), []).append(r.point.infer_per_s if r.point else 0.0)
    return {key: float(statistics.median(values)) for key, values in groups.items()}


def render(
    machine_line: str, ensemble: str, search: Search, ranked: list[Measured], pick: Measured | None, results: list[Compared], kept: str
) -> str:
    """``model_analyzer.md``: Model Analyzer's ranking, its pick against the hand-tuned
    configuration measured side by side, and which one the project keeps."""
    lines = [
        f"# Model Analyzer on `{ensemble}`",
        "",
        f"Machine: {machine_line}. Written by `perf/model_analyzer.py` (`make model-analyzer`).",
        "",
        f"Model Analyzer ({ANALYZER_PACKAGE}, its own environment `.venv-analyzer`), local launch of the project's",
        f"tritonserver, every composing model on the CPU: {search.describe()};",
        f"real TrashNet JPEG bytes; objective throughput, constraint p99 within {search.p99_budget_ms:g} ms.",
        "Its summary report is `result_summary.html`, every measurement `metrics-model-inference.csv`.",
        "",
        "## Its ranking (each configuration's best point within the budget)",
        "",
        "| configuration | composing models | img/s | p99 ms | concurrency |",
        "|---|---|---|---|---|",
    ]
    for row in ranked:
        name = f"{row.config} ({HAND_TUNED})" if row.is_default else row.config
        lines.append(f"| {name} | {describe(row)} | {row.throughput:.1f} | {row.p99_ms:.1f} | {row.concurrency} |")
    lines += ["", "## Its pick against the hand-tuned configuration, side by side", ""]
    if pick is None:
        lines.append("Model Analyzer's best configuration within the budget is the hand-tuned one: nothing to compare.")
    else:
        table = medians(results)
        rounds = 1 + max(r.round for r in results)
        labels = list(dict.fromkeys(r.label for r in results))
        lines += [
            f"Each configuration served by a fresh tritonserver, in turn, {rounds} rounds; perf_analyzer sweeps on each",
            f"protocol; the median of the rounds' best throughput within p99 {search.p99_budget_ms:g} ms. {PICK}: {describe(pick)}.",
            f"{PICK_INSTANCES}: the hand-tuned batching with the pick's instance counts.",
            "",
            "| protocol | "
            + " | ".join(f"{label} img/s" for label in labels)
            + " | "
            + " | ".join(f"{label} / hand-tuned" for label in labels[1:])
            + " |",
            "|---" * (2 * len(labels)) + "|",
        ]
        for protocol in sorted({r.protocol for r in results}):
            values = [table[(label, protocol)] for label in labels]
            ratios = [f"{v / values[0]:.3f}" if values[0] else "-" for v in values[1:]]
            lines.append(f"| {protocol} | " + " | ".join(f"{v:.1f}" for v in values) + " | " + " | ".join(ratios) + " |")
        errors = [f"{r.label} {r.protocol} round {r.round}: {r.error}" for r in results if r.error]
        lines += [f"- error: {e}" for e in errors]
    lines += ["", f"**Kept: {kept}.**", ""]
    return "\n".join(lines)


def verdict(results: list[Compared], capacity: dict[str, int], margin: float = 0.03) -> str:
    """Which configuration the project keeps: the fastest of those that accept the requests the
    hand-tuned one accepts (``capacity``: images per request), when it beats the hand-tuned one
    by more than ``margin`` on every protocol (run-to-run noise on this machine is a few
    percent); else the hand-tuned one."""
    table = medians(results)
    protocols = sorted({r.protocol for r in results})
    labels = [label for label in dict.fromkeys(r.label for r in results) if label != HAND_TUNED]
    keeps = [label for label in labels if capacity[label] >= capacity[HAND_TUNED]]
    better = [label for label in keeps if all(table[(label, p)] > (1 + margin) * table[(HAND_TUNED, p)] for p in protocols)]
    capped = [f"{label} caps requests at {capacity[label]} image(s)" for label in labels if label not in keeps]
    note = f" ({'; '.join(capped)}: not kept whatever its speed)" if capped else ""
    beyond = f"by more than {margin:.0%} on every protocol"
    if better:
        best = max(better, key=lambda label: min(table[(label, p)] / table[(HAND_TUNED, p)] for p in protocols))
        return f"{best}, faster than the hand-tuned configuration {beyond}{note}"
    return f"the hand-tuned configuration: no configuration that accepts its requests is faster {beyond}{note}"
