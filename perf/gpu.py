"""Benchmark: the GPU rows of the throughput table (PyTorch on CUDA), both shipped models.

    python perf/gpu.py [--data ../shared/data/trashnet] [--batches 1 8 64] [--out perf/results/<host>-gpu]

(``make perf-gpu``.) For each committed model (default: the served one and the from-scratch
one), every :data:`wastesort.perf.gpu.VARIANTS` entry (eager FP32 / FP16, channels-last, a
CUDA graph, ``torch.compile`` with and without CUDA graphs) at every batch, on the real test
split through the serving preprocessing, timed side by side per batch; plus the rows that
cannot run here (ONNX Runtime CUDA, TensorRT) with their reason. Writes ``gpu.md``,
``gpu.json`` and ``machine.json``. Without a CUDA device it says why and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from wastesort import machine as mach
from wastesort.contract import PreprocessContract
from wastesort.data import DatasetError
from wastesort.evaluation import split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.perf import gpu, write_json
from wastesort.perf import inprocess as ip
from wastesort.shipped import DEFAULT_NET, FROM_SCRATCH_NET, ShippedModel
from wastesort.triton.naming import installed_file, variant_name
from wastesort.triton.server import MODEL_REPOSITORY


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=[DEFAULT_NET, FROM_SCRATCH_NET], help="committed models (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="ImageFolder root the manifests' paths are relative to")
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="where built TensorRT / FP16 variants are looked for")
    parser.add_argument("--batches", type=int, nargs="+", default=list(gpu.BATCHES))
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per row and batch")
    parser.add_argument("--quick", action="store_true", help="no torch.compile rows (they take minutes to compile)")
    parser.add_argument("--note", action="append", default=[], help="a line for the table's notes (e.g. why a row cannot run)")
    parser.add_argument("--out", type=Path, default=None, help="default: perf/results/<host>-gpu")
    args = parser.parse_args(argv)
    args.out = args.out or REPO_ROOT / "perf" / "results" / f"{mach.host_name()}-gpu"
    return args


def skipped_rows(net: str, repository: Path, side: int) -> list[gpu.GpuRow]:
    """ONNX Runtime CUDA and TensorRT rows of ``net``: the reason each cannot run here (when one
    can, the table says it was not timed by this script: ``make perf`` times it)."""
    onnx = ShippedModel(net).onnx
    plans = {p: installed_file(repository, variant_name(net, f"trt_{p}"), "model.plan") for p in ("fp32", "fp16", "int8")}
    found = [
        ip.ort_candidate("ONNX Runtime", onnx, "fp32", "cuda"),
        ip.ort_candidate("ONNX Runtime", installed_file(repository, variant_name(net, "onnx_fp16")), "fp16", "cuda"),
        *(ip.tensorrt_candidate("TensorRT", plan, p) for p, plan in plans.items()),
    ]
    rows = []
    for c in found:
        reason = c.reason if isinstance(c, ip.Skipped) else "runs here: timed by make perf (perf/run.py), not by this script"
        if isinstance(c, ip.Candidate):
            c.close()
        rows.append(gpu.GpuRow(net, c.name, c.precision, 0, side, skipped=reason))
    return rows


def write(args: argparse.Namespace, machine: dict, rows: list[gpu.GpuRow], models: dict[str, dict]) -> str:
    """``gpu.md``, ``gpu.json`` (with ``models``: :func:`gpu.measured_model` per network) and
    ``machine.json`` in ``args.out``; the table's text."""
    args.out.mkdir(parents=True, exist_ok=True)
    text = gpu.table(rows, machine, [*args.note, gpu.precision_note()])
    (args.out / "gpu.md").write_text(text)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"machine": machine, "settings": settings, gpu.MODELS_KEY: models, "rows": [asdict(r) for r in rows]}
    write_json(args.out / "gpu.json", result)
    write_json(args.out / "machine.json", machine)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = gpu.unavailable_reason()
    if reason:
        print(f"GPU rows skipped: {reason}")
        return 0
    from wastesort.perf.torch_model import check_against_onnx, torch_from_onnx

    start = time.perf_counter()
    machine = mach.describe()
    print(f"machine: {mach.one_line(machine)}")
    variants = gpu.QUICK_VARIANTS if args.quick else gpu.VARIANTS
    rows: list[gpu.GpuRow] = []
    models: dict[str, dict] = {}
    for net in args.nets:
        shipped = ShippedModel(net)
        models[net] = gpu.measured_model(shipped)
        contract = PreprocessContract.from_onnx(str(shipped.onnx))
        try:
            test = shipped.split("test", args.data)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        images, labels = split_tensors(test, contract)
        reference = OnnxClassifier(shipped.onnx).probabilities(images).argmax(1)
        model = torch_from_onnx(shipped.onnx, net, len(contract.labels))
        diff = check_against_onnx(model, shipped.onnx, images[:8])
        print(f"{net}: {len(test)} test photos at {contract.height}px; PyTorch rebuild within {diff:.1e} of ONNX Runtime")
        rows += gpu.rows_for(net, model, images, labels, reference, tuple(args.batches), variants, args.iters)
        rows += skipped_rows(net, args.repository, contract.height)
        text = write(args, machine, rows, models)  # after each model: a run cut short keeps what it measured
    print(text)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
