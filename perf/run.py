"""Benchmark: the throughput table, in-process and served through Triton, on real images.

    python perf/run.py [--quick] [--data ../shared/data/trashnet] [--out perf/results/<host>]

(``make perf`` / ``make perf-quick``.) One run, on one machine:

1. In-process rows, timed side by side with one method (:mod:`wastesort.timing`): the same
   real test-split images through the serving preprocessing, the same batch (``--batch``,
   default 64), warm-up, ``--iters`` timed iterations interleaved round-robin, host tensor in
   and host result out (GPU rows synchronise inside every iteration). Rows: PyTorch eager
   (CPU, and CUDA when present), ONNX Runtime FP32 and INT8 (CPU: all cores and one thread),
   OpenVINO FP32 and INT8 (the same ONNX files), FP32/FP16 (CUDA), the TensorRT plans, the
   preprocessing alone (bytes to tensor on a pool of one thread per core, as the server
   decodes: img/s per core; and the previous Pillow decoder) and the whole pipeline in one
   process (bytes to label, FP32 and INT8: what the ensembles are compared with). Each row carries its top-1 on the test
   split. Rows that cannot run here say why.
2. An ONNX Runtime op-type profile of FP32 and INT8 (``profile.md``): where the time goes.
3. Served rows: the harness starts ``tritonserver`` on the project's repository (127.0.0.1,
   free ports) and drives every ready classifier (real preprocessed tensors) and ensemble (real
   JPEG bytes) with ``perf_analyzer`` over a concurrency sweep, HTTP and gRPC, ``-f`` CSV.
   Reported: the best throughput with p99 within ``--budget-ms`` and the server-side split.

Outputs in ``--out``: ``table.md``, ``served.md``, ``profile.md``, ``summary.json``,
``machine.json``, ``csv/`` (raw perf_analyzer CSVs and logs) and PNG plots. The target ratios
are printed at the end and stored in ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from dataclasses import replace
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=DEFAULT_NET, help="committed model under models/ (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="ImageFolder root the manifest's paths are relative to")
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--out", type=Path, default=None, help="default: perf/results/<host> (quick: <host>-quick)")
    parser.add_argument("--quick", action="store_true", help="a short version (about 4 minutes on 2 cores)")
    parser.add_argument("--batch", type=int, default=64, help="in-process batch size")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per row (default 20, quick 8)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--seed-resolution", type=int, default=224, help="also time PyTorch and ONNX Runtime FP32 at this side, the seed table's (0: off)"
    )
    parser.add_argument("--budget-ms", type=float, default=100.0, help="served: p99 latency budget")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="served: levels (default 1 2 4 8 16; quick 1 2 4)")
    parser.add_argument("--request-batch", type=int, nargs="+", default=[1, 8], help="served: images per ensemble request")
    parser.add_argument("--protocols", nargs="+", default=["grpc", "http"], choices=["grpc", "http"])
    parser.add_argument("--measurement-ms", type=int, default=None, help="perf_analyzer window (default 2000, quick 1000)")
    parser.add_argument(
        "--models",
        nargs="*",
        default=None,
        help="served models (default: every ready one; quick: the FP32 and INT8 ensembles and the client's default)",
    )
    parser.add_argument("--server", default=None, help="drive this running server (host) instead of starting one, e.g. the compose service")
    parser.add_argument("--http-port", type=int, default=8000, help="with --server")
    parser.add_argument("--grpc-port", type=int, default=8001, help="with --server")
    parser.add_argument("--skip-inprocess", action="store_true", help="served rows only (e.g. in the -py3-sdk container)")
    parser.add_argument("--skip-served", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    args = parser.parse_args(argv)
    args.iters = args.iters or (8 if args.quick else 20)
    args.concurrency = args.concurrency or ([1, 2, 4] if args.quick else [1, 2, 4, 8, 16])
    args.measurement_ms = args.measurement_ms or (1000 if args.quick else 2000)
    args.out = args.out or REPO_ROOT / "perf" / "results" / (mach.host_name() + ("-quick" if args.quick else ""))
    return args


def candidates(
    args: argparse.Namespace, contract: PreprocessContract, onnx: Path, check: np.ndarray, scratch: Path
) -> list[ip.Candidate | ip.Skipped]:
    repo, net = args.repository, args.net
    int8 = installed_file(repo, variant_name(net, "onnx_int8"))
    rows: list[ip.Candidate | ip.Skipped] = [*ip.torch_candidates(onnx, net, len(contract.labels), check, args.batch)]
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
    if args.seed_resolution and args.seed_resolution != contract.height:
        free = ip.free_resolution_onnx(onnx, scratch / f"{net}_free_resolution.onnx")
        torch_cpu = [replace(r) for r in rows if isinstance(r, ip.Candidate) and (r.backend, r.device) == ("pytorch", "cpu")]
        rows += ip.at_resolution([*torch_cpu, ip.ort_candidate("ONNX Runtime", free, "fp32")], args.seed_resolution)
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
    args: argparse.Namespace, onnx: Path, contract: PreprocessContract, test: list[Sample], test_x, test_y, encoded
) -> list[rep.InprocessRow]:
    found = candidates(args, contract, onnx, test_x, args.scratch)
    ran = [c for c in found if isinstance(c, ip.Candidate)]
    # tensors at another side only for the rows fed tensors (a bytes row decodes with its own contract)
    sides = {c.resolution for c in ran if c.resolution and c.inputs == "tensor"}
    tensors = {None: test_x} | {side: ev.split_tensors(test, replace(contract, height=side, width=side))[0] for side in sides}
    accuracy = {
        id(c): ip.top1(c, tensors[c.resolution if c.inputs == "tensor" else None], encoded, test_y, args.batch)
        for c in tqdm(ran, desc="accuracy on the test split", unit="row")
    }
    batches = {side: fixed_batch(x, args.batch) for side, x in tensors.items()}
    jpegs = [encoded[i % len(encoded)] for i in range(args.batch)]
    steps = [partial(c.predict, jpegs if c.inputs == "bytes" else batches[c.resolution]) for c in ran]
    print(
        f"timing {len(ran)} rows side by side: batch {args.batch}, {args.warmup} warm-up + {args.iters} timed iterations each, interleaved"
    )
    timings = dict(zip((id(c) for c in ran), time_interleaved(steps, args.batch, args.iters, args.warmup), strict=True))
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


def served_models(server: TritonServer, args: argparse.Namespace, gpu: bool) -> list[tuple[str, str]]:
    """(model, kind) of every ready model to drive, from the server's repository index. FP16
    variants are GPU variants: on a server without a GPU they are left out (and say so)."""
    client = httpclient.InferenceServerClient(server.http_url)
    ready = [m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"]
    # --quick: the two compared with the pipelines, and the client's default when it is another (a TTA ensemble)
    candidates = [e for e in default_ensembles(args.net) if e in ready]
    default = choose(candidates, lambda e: marked_in(client.get_model_config(e)))
    quick = [*served_ensembles(args.net).values(), *([default] if default else [])]
    wanted = args.models if args.models is not None else (quick if args.quick else ready)
    chosen = []
    for name in ready:
        if name not in wanted or name == "preprocess":
            continue
        if name.endswith("_fp16") and not gpu and args.models is None:
            print(f"served: {name} left out: an FP16 variant is for the GPU (this server has none; --models to force)")
            continue
        inputs = [i["name"] for i in client.get_model_metadata(name)["inputs"]]
        if IMAGE_BYTES in inputs:
            chosen.append((name, "ensemble"))
        elif IMAGES in inputs:
            chosen.append((name, "classifier"))
    client.close()
    return chosen


def run_served(args: argparse.Namespace, test_x: np.ndarray, encoded: list[bytes]) -> tuple[list[rep.ServedSweep], str]:
    reason = pa.unavailable_reason()
    if reason:
        print(f"served rows skipped: {reason}")
        return [], reason
    raw = pa.fresh_raw_folder(args.out / "csv")
    # the input data holds dataset images: kept out of the results folder, which is committed
    inputs = {"ensemble": args.scratch / "input_jpeg_bytes.json", "classifier": args.scratch / "input_tensors.json"}
    n = 32 if args.quick else 128
    inputs["ensemble"].write_text(json.dumps(pa.bytes_input_data(encoded[:n], IMAGE_BYTES)))
    inputs["classifier"].write_text(json.dumps(pa.tensor_input_data(test_x[:n], IMAGES)))
    sweeps = []
    if args.server:
        server = TritonServer(args.repository, ports={"http": args.http_port, "grpc": args.grpc_port}, address=args.server)
        if not server.is_ready():
            raise SystemExit(f"error: no ready Triton server at {server.http_url}")
        context = contextlib.nullcontext(server)
    else:
        context = TritonServer(args.repository, log_path=args.out / "tritonserver.log")
    with context as server:
        server_version = httpclient.InferenceServerClient(server.http_url).get_server_metadata()["version"]
        jobs = []
        for model, kind in served_models(server, args, gpu=bool(mach.gpus())):
            for protocol in args.protocols:
                for request_batch in args.request_batch if kind == "ensemble" else [1]:
                    jobs.append(rep.ServedSweep(model, kind, protocol, request_batch))
        with tqdm(total=len(jobs) * len(args.concurrency), desc="perf_analyzer", unit="run") as bar:
            for sweep in jobs:
                url = server.grpc_url if sweep.protocol == "grpc" else server.http_url
                run_settings = pa.SweepSettings(batch=sweep.request_batch, measurement_ms=args.measurement_ms)
                sweep.points, sweep.error = pa.sweep(
                    sweep.model, url, sweep.protocol, args.concurrency, inputs[sweep.kind], run_settings, raw,
                    stop_past_ms=3 * args.budget_ms, on_level=lambda stem: (bar.set_postfix_str(stem), bar.update(1)),
                )  # fmt: skip
                bar.update(len(args.concurrency) - len(sweep.points) - bool(sweep.error))
                sweeps.append(sweep)
    return sweeps, server_version


def test_split(args: argparse.Namespace) -> list[Sample]:
    """The test split of the model's manifest, every file present under ``--data``."""
    try:
        return ShippedModel(args.net).split("test", args.data)
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the server this harness started is stopped by its PID
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    onnx = ShippedModel(args.net).onnx
    if not args.data.is_dir():
        print(f"error: no dataset at {args.data}: the benchmark runs on the real test split (--data)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wastesort-perf-") as scratch:
        args.scratch = Path(scratch)
        return run(args, onnx, start)


def run(args: argparse.Namespace, onnx: Path, start: float) -> int:
    machine = mach.describe()
    print(f"machine: {mach.one_line(machine)}")
    contract = PreprocessContract.from_onnx(str(onnx))
    test = test_split(args)
    test_x, test_y = ev.split_tensors(test, contract)
    encoded = [s.path.read_bytes() for s in test]

    rows = [] if args.skip_inprocess else run_inprocess(args, onnx, contract, test, test_x, test_y, encoded)
    if rows:
        table = rep.inprocess_table(
            rows, machine, "the faster PyTorch eager FP32 row on CPU (default layout or channels-last)", contract.height
        )
        (args.out / "table.md").write_text(table)
        print(table)

    if not args.skip_profile and not args.skip_inprocess:
        int8 = installed_file(args.repository, variant_name(args.net, "onnx_int8"))
        models = {"FP32": onnx, **({"INT8": int8} if int8.exists() else {})}
        text = profile_table(models, fixed_batch(test_x, args.batch), runs=3 if args.quick else 10)
        (args.out / "profile.md").write_text(text)
        print(text)

    sweeps, served_note = ([], "skipped (--skip-served)") if args.skip_served else run_served(args, test_x, encoded)
    if sweeps:
        served = rep.served_table(sweeps, args.budget_ms, machine)
        (args.out / "served.md").write_text(served)
        print(served)
    machine["tritonserver"] = served_note
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "scratch"}
    summary = rep.summary(machine, settings, rows, sweeps, args.budget_ms, ensembles=served_ensembles(args.net))
    write_json(args.out / "summary.json", summary)
    write_json(args.out / "machine.json", machine)
    plots = [p for p in [rep.plot_inprocess(rows, args.out), *rep.plot_served(sweeps, args.out, args.budget_ms)] if p]
    print("\n".join(rep.target_lines(summary["ratios"])))
    print(f"wrote {args.out} ({', '.join(p.name for p in plots)}) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
