"""The throughput table as one library call (``perf/run.py``, ``make perf``): in-process rows
timed side by side, an ONNX Runtime op profile, and perf_analyzer sweeps of the served models,
written to ``settings.out`` with the machine they ran on.

:func:`run_benchmark` takes a :class:`PerfSettings` and returns the summary it wrote
(``summary.json``); the entry script only parses arguments into the settings.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tqdm import tqdm

from wastesort import evaluation as ev
from wastesort import machine as mach
from wastesort.contract import PreprocessContract
from wastesort.data import DatasetError, Sample
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.perf import analyzer as pa
from wastesort.perf import inprocess as ip
from wastesort.perf import report as rep
from wastesort.perf import write_json
from wastesort.perf.profile import profile_table
from wastesort.shipped import DEFAULT_NET, FROM_SCRATCH_NET, IMAGE_BYTES, IMAGES, ShippedModel
from wastesort.timing import fixed_batch, time_interleaved
from wastesort.triton.default import choose, marked_in
from wastesort.triton.naming import INT8, default_ensembles, ensemble_name, ensemble_of, installed_file, variant_name
from wastesort.triton.server import MODEL_REPOSITORY, TritonServer

#: Where each machine's results go: ``perf/results/<host>`` (``<host>-quick`` for ``--quick``).
RESULTS_DIR = REPO_ROOT / "perf" / "results"


class BenchmarkError(Exception):
    """The benchmark cannot run: no photos, or no server where one was named."""


@dataclass
class PerfSettings:
    """The benchmark's options; ``None`` fields take the full or the quick run's value."""

    net: str = DEFAULT_NET
    data: Path = DEFAULT_TRASHNET
    repository: Path = MODEL_REPOSITORY
    out: Path | None = None
    quick: bool = False
    batch: int = 64
    iters: int | None = None
    warmup: int = 3
    seed_resolution: int = 224
    budget_ms: float = 100.0
    concurrency: list[int] | None = None
    request_batch: list[int] = (1, 8)
    protocols: list[str] = ("grpc", "http")
    measurement_ms: int | None = None
    models: list[str] | None = None
    server: str | None = None
    http_port: int = 8000
    grpc_port: int = 8001
    skip_inprocess: bool = False
    skip_served: bool = False
    skip_profile: bool = False

    def __post_init__(self) -> None:
        self.iters = self.iters or (8 if self.quick else 20)
        self.concurrency = list(self.concurrency or ([1, 2, 4] if self.quick else [1, 2, 4, 8, 16]))
        self.measurement_ms = self.measurement_ms or (1000 if self.quick else 2000)
        self.out = Path(self.out or RESULTS_DIR / (mach.host_name() + ("-quick" if self.quick else "")))
        self.request_batch, self.protocols = list(self.request_batch), list(self.protocols)


def run_benchmark(settings: PerfSettings) -> dict:
    """Run every part the settings ask for and write the results; returns ``summary.json``'s
    content. Raises :class:`BenchmarkError` when it cannot start."""
    start = time.perf_counter()
    onnx = ShippedModel(settings.net).onnx
    if not settings.data.is_dir():
        raise BenchmarkError(f"no dataset at {settings.data}: the benchmark runs on the real test split (--data)")
    settings.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wastesort-perf-") as scratch:
        return _run(settings, onnx, start, Path(scratch))


def candidates(
    settings: PerfSettings, contract: PreprocessContract, onnx: Path, check: np.ndarray, scratch: Path
) -> list[ip.Candidate | ip.Skipped]:
    repo, net = settings.repository, settings.net
    int8 = installed_file(repo, variant_name(net, "onnx_int8"))
    rows: list[ip.Candidate | ip.Skipped] = [*ip.torch_candidates(onnx, net, len(contract.labels), check, settings.batch)]
    rows.append(ip.ort_candidate("ONNX Runtime", onnx, "fp32"))
    rows.append(ip.ort_candidate("ONNX Runtime", int8, "int8"))
    rows.append(ip.ort_candidate("ONNX Runtime, 1 thread", onnx, "fp32", threads=1))
    rows.append(ip.ort_candidate("ONNX Runtime, 1 thread", int8, "int8", threads=1))
    rows.append(ip.openvino_candidate("OpenVINO", onnx, "fp32"))
    rows.append(ip.openvino_candidate("OpenVINO", int8, "int8"))
    rows.append(ip.ort_candidate("ONNX Runtime", onnx, "fp32", "cuda"))
    rows.append(ip.ort_candidate("ONNX Runtime", installed_file(repo, variant_name(net, "onnx_fp16")), "fp16", "cuda"))
    for precision in ("fp32", "fp16", "int8"):
        rows.append(ip.tensorrt_candidate("TensorRT", installed_file(repo, variant_name(net, f"trt_{precision}"), "model.plan"), precision))
    if settings.seed_resolution and settings.seed_resolution != contract.height:
        free = ip.free_resolution_onnx(onnx, scratch / f"{net}_free_resolution.onnx")
        torch_cpu = [replace(r) for r in rows if isinstance(r, ip.Candidate) and (r.backend, r.device) == ("pytorch", "cpu")]
        rows += ip.at_resolution([*torch_cpu, ip.ort_candidate("ONNX Runtime", free, "fp32")], settings.seed_resolution)
    rows.append(ip.preprocess_candidate(contract))
    if contract.interpolation != "bilinear":  # what the service decoded with before
        pillow = contract.with_pillow_decoder()
        rows.append(ip.preprocess_candidate(pillow, name="preprocessing, previous decoder"))
    rows.append(ip.pipeline_candidate(onnx))
    if int8.exists():
        rows.append(ip.pipeline_candidate(int8, "int8"))
    scratch_model = ShippedModel(FROM_SCRATCH_NET).onnx
    if net != FROM_SCRATCH_NET and scratch_model.is_file():  # the speed/accuracy trade-off, same photos, same run
        name = f"pipeline (bytes to label), {FROM_SCRATCH_NET} from scratch"
        rows.append(ip.pipeline_candidate(scratch_model, name=name, model_side=contract.height))
    return rows


def run_inprocess(
    settings: PerfSettings, onnx: Path, contract: PreprocessContract, test: list[Sample], test_x, test_y, encoded, scratch: Path
) -> list[rep.InprocessRow]:
    found = candidates(settings, contract, onnx, test_x, scratch)
    ran = [c for c in found if isinstance(c, ip.Candidate)]
    # tensors at another side only for the rows fed tensors (a bytes row decodes with its own contract)
    sides = {c.resolution for c in ran if c.resolution and c.inputs == "tensor"}
    tensors = {None: test_x} | {side: ev.split_tensors(test, replace(contract, height=side, width=side))[0] for side in sides}
    accuracy = {
        id(c): ip.top1(c, tensors[c.resolution if c.inputs == "tensor" else None], encoded, test_y, settings.batch)
        for c in tqdm(ran, desc="accuracy on the test split", unit="row")
    }
    batches = {side: fixed_batch(x, settings.batch) for side, x in tensors.items()}
    jpegs = [encoded[i % len(encoded)] for i in range(settings.batch)]
    steps = [partial(c.predict, jpegs if c.inputs == "bytes" else batches[c.resolution]) for c in ran]
    print(
        f"timing {len(ran)} rows side by side: batch {settings.batch}, "
        f"{settings.warmup} warm-up + {settings.iters} timed iterations each, interleaved"
    )
    timings = dict(zip((id(c) for c in ran), time_interleaved(steps, settings.batch, settings.iters, settings.warmup), strict=True))
    for c in ran:
        c.close()
    rows = []
    for c in found:
        if isinstance(c, ip.Skipped):
            rows.append(rep.InprocessRow(c.name, c.backend, c.precision, c.device, skipped=c.reason))
            print(f"skipped {c.name} {c.precision} {c.device}: {c.reason}")
            continue
        t = timings[id(c)]
        latency = {"median_ms": round(t.median_ms, 2), "p90_ms": round(t.p90_ms, 2), "p99_ms": round(t.p99_ms, 2)}
        row = rep.InprocessRow(c.name, c.backend, c.precision, c.device, t.batch, c.resolution, len(t.samples_ms), **latency)
        row.threads = c.threads
        row.img_s, row.top1, row.note = round(t.img_s, 1), accuracy[id(c)], c.note
        rows.append(row)
    for r in rows:
        base = rep.torch_baseline(rows, r.resolution)
        if base and r.img_s and r.backend != ip.PREPROCESS_BACKEND:
            r.speedup = round(r.img_s / base.img_s, 2)
    return rows


def served_ensembles(net: str) -> dict[str, str]:
    """The ensembles compared with the in-process pipelines (one pass per photo), by classifier
    precision."""
    return {"fp32": ensemble_name(net), "int8": ensemble_of(variant_name(net, INT8))}


def served_models(server: TritonServer, settings: PerfSettings, gpu: bool) -> list[tuple[str, str]]:
    """(model, kind) of every ready model to drive, from the server's repository index. FP16
    variants are GPU variants: on a server without a GPU they are left out (and say so)."""
    client = httpclient.InferenceServerClient(server.http_url)
    ready = [m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"]
    # --quick: the two compared with the pipelines, and the client's default when it is another (a TTA ensemble)
    candidates = [e for e in default_ensembles(settings.net) if e in ready]
    default = choose(candidates, lambda e: marked_in(client.get_model_config(e)))
    quick = [*served_ensembles(settings.net).values(), *([default] if default else [])]
    wanted = settings.models if settings.models is not None else (quick if settings.quick else ready)
    chosen = []
    for name in ready:
        if name not in wanted or name == "preprocess":
            continue
        if name.endswith("_fp16") and not gpu and settings.models is None:
            print(f"served: {name} left out: an FP16 variant is for the GPU (this server has none; --models to force)")
            continue
        inputs = [i["name"] for i in client.get_model_metadata(name)["inputs"]]
        if IMAGE_BYTES in inputs:
            chosen.append((name, "ensemble"))
        elif IMAGES in inputs:
            chosen.append((name, "classifier"))
    client.close()
    return chosen


def run_served(settings: PerfSettings, test_x: np.ndarray, encoded: list[bytes], scratch: Path) -> tuple[list[rep.ServedSweep], str]:
    reason = pa.unavailable_reason()
    if reason:
        print(f"served rows skipped: {reason}")
        return [], reason
    raw = pa.fresh_raw_folder(settings.out / "csv")
    # the input data holds dataset images: kept out of the results folder, which is committed
    inputs = {"ensemble": scratch / "input_jpeg_bytes.json", "classifier": scratch / "input_tensors.json"}
    n = 32 if settings.quick else 128
    inputs["ensemble"].write_text(json.dumps(pa.bytes_input_data(encoded[:n], IMAGE_BYTES)))
    inputs["classifier"].write_text(json.dumps(pa.tensor_input_data(test_x[:n], IMAGES)))
    sweeps = []
    if settings.server:
        server = TritonServer(settings.repository, ports={"http": settings.http_port, "grpc": settings.grpc_port}, address=settings.server)
        if not server.is_ready():
            raise BenchmarkError(f"no ready Triton server at {server.http_url}")
        context = contextlib.nullcontext(server)
    else:
        context = TritonServer(settings.repository, log_path=settings.out / "tritonserver.log")
    with context as server:
        server_version = httpclient.InferenceServerClient(server.http_url).get_server_metadata()["version"]
        jobs = []
        for model, kind in served_models(server, settings, gpu=bool(mach.gpus())):
            for protocol in settings.protocols:
                for request_batch in settings.request_batch if kind == "ensemble" else [1]:
                    jobs.append(rep.ServedSweep(model, kind, protocol, request_batch))
        with tqdm(total=len(jobs) * len(settings.concurrency), desc="perf_analyzer", unit="run") as bar:
            for sweep in jobs:
                url = server.grpc_url if sweep.protocol == "grpc" else server.http_url
                run_settings = pa.SweepSettings(batch=sweep.request_batch, measurement_ms=settings.measurement_ms)
                sweep.points, sweep.error = pa.sweep(
                    sweep.model, url, sweep.protocol, settings.concurrency, inputs[sweep.kind], run_settings, raw,
                    stop_past_ms=3 * settings.budget_ms, on_level=lambda stem: (bar.set_postfix_str(stem), bar.update(1)),
                )  # fmt: skip
                bar.update(len(settings.concurrency) - len(sweep.points) - bool(sweep.error))
                sweeps.append(sweep)
    return sweeps, server_version


def test_split(settings: PerfSettings) -> list[Sample]:
    """The test split of the model's manifest, every file present under ``settings.data``."""
    try:
        return ShippedModel(settings.net).split("test", settings.data)
    except DatasetError as exc:
        raise BenchmarkError(str(exc)) from exc


def _run(settings: PerfSettings, onnx: Path, start: float, scratch: Path) -> dict:
    machine = mach.describe()
    print(f"machine: {mach.one_line(machine)}")
    contract = PreprocessContract.from_onnx(str(onnx))
    test = test_split(settings)
    test_x, test_y = ev.split_tensors(test, contract)
    encoded = [s.path.read_bytes() for s in test]

    rows = [] if settings.skip_inprocess else run_inprocess(settings, onnx, contract, test, test_x, test_y, encoded, scratch)
    if rows:
        table = rep.inprocess_table(
            rows, machine, "the faster PyTorch eager FP32 row on CPU (default layout or channels-last)", contract.height
        )
        (settings.out / "table.md").write_text(table)
        print(table)

    if not settings.skip_profile and not settings.skip_inprocess:
        int8 = installed_file(settings.repository, variant_name(settings.net, "onnx_int8"))
        models = {"FP32": onnx, **({"INT8": int8} if int8.exists() else {})}
        text = profile_table(models, fixed_batch(test_x, settings.batch), runs=3 if settings.quick else 10)
        (settings.out / "profile.md").write_text(text)
        print(text)

    sweeps, served_note = ([], "skipped (--skip-served)") if settings.skip_served else run_served(settings, test_x, encoded, scratch)
    if sweeps:
        served = rep.served_table(sweeps, settings.budget_ms, machine)
        (settings.out / "served.md").write_text(served)
        print(served)
    machine["tritonserver"] = served_note
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()}
    summary = rep.summary(machine, recorded, rows, sweeps, settings.budget_ms, ensembles=served_ensembles(settings.net))
    write_json(settings.out / "summary.json", summary)
    write_json(settings.out / "machine.json", machine)
    plots = [p for p in [rep.plot_inprocess(rows, settings.out), *rep.plot_served(sweeps, settings.out, settings.budget_ms)] if p]
    print("\n".join(rep.target_lines(summary["ratios"])))
    print(f"wrote {settings.out} ({', '.join(p.name for p in plots)}) in {time.perf_counter() - start:.0f} s")
    return summary
