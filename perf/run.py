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
import signal
import sys
from pathlib import Path

from wastesort.perf.benchmark import BenchmarkError, PerfSettings, run_benchmark

DEFAULTS = PerfSettings()


def parse_args(argv: list[str] | None) -> PerfSettings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=DEFAULTS.net, help="committed model under models/ (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULTS.data, help="ImageFolder root the manifest's paths are relative to")
    parser.add_argument("--repository", type=Path, default=DEFAULTS.repository)
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
    parser.add_argument(
        "--request-batch", type=int, nargs="+", default=list(DEFAULTS.request_batch), help="served: images per ensemble request"
    )
    parser.add_argument("--protocols", nargs="+", default=list(DEFAULTS.protocols), choices=["grpc", "http"])
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
    return PerfSettings(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the server this harness started is stopped by its PID
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_benchmark(settings)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
