"""GPU rows of the throughput table: the shipped models in PyTorch on CUDA, each way a user
would try to make them fast, at several batch sizes, side by side in one run.

A :class:`GpuVariant` is one way of running the rebuilt model (:func:`torch_from_onnx`, the
ONNX file's own weights): eager FP32 (the seed's baseline), channels-last, FP16 (weights and
activations in half precision, logits returned as float32), a CUDA graph captured by hand
(:class:`torch.cuda.CUDAGraph`, static input and output), and ``torch.compile`` with the
default mode and with ``mode="reduce-overhead"`` (Inductor plus CUDA graphs).

:func:`runner` turns a model and a variant into a function of a fixed ``batch``: float32
``(N, 3, H, W)`` host array in (any ``N``: shorter batches are padded, longer ones split),
float32 ``(N, C)`` logits on the host out, after synchronising. Compilation and graph capture
happen in :func:`runner` (warm-up included), so they are never timed; their seconds are kept.

:func:`measure` times every runner of one model and batch interleaved
(:func:`time_interleaved`) in two ways:

* ``host``: host array in, host logits out (pageable copies both ways): what a Python service
  that receives the tensor pays per batch;
* ``device``: the input already on the GPU, ``launches`` calls back to back, then one
  synchronise: the model's own throughput.

Every variant also gets its top-1 on the test split and its top-1 agreement with ONNX Runtime
FP32 on the CPU (FP16 and compiled kernels may move a close call).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wastesort.machine import one_line
from wastesort.shipped import ShippedModel, sha256
from wastesort.timing import Timing, fixed_batch, time_interleaved
from wastesort.variants.report import cell

#: Batch sizes of the GPU table.
BATCHES = (1, 8, 64)


@dataclass(frozen=True)
class GpuVariant:
    """One way of running a PyTorch model on the GPU."""

    name: str
    precision: str = "fp32"  # "fp32" or "fp16"
    channels_last: bool = False
    cuda_graph: bool = False  # captured by hand with torch.cuda.CUDAGraph
    compile_mode: str | None = None  # torch.compile mode; None: eager

    @property
    def needs_cuda(self) -> bool:
        return self.cuda_graph or self.compile_mode == "reduce-overhead"


EAGER_FP32 = GpuVariant("eager")
VARIANTS = (
    EAGER_FP32,
    GpuVariant("eager, channels-last", channels_last=True),
    GpuVariant("eager", precision="fp16"),
    GpuVariant("eager, channels-last", precision="fp16", channels_last=True),
    GpuVariant("CUDA graph, channels-last", precision="fp16", channels_last=True, cuda_graph=True),
    GpuVariant("torch.compile, channels-last", precision="fp16", channels_last=True, compile_mode="default"),
    GpuVariant("torch.compile reduce-overhead, channels-last", precision="fp16", channels_last=True, compile_mode="reduce-overhead"),
)
#: The variants that cost no compilation: what ``make perf`` adds on a GPU machine at its batch.
QUICK_VARIANTS = tuple(v for v in VARIANTS if v.compile_mode is None)


@dataclass
class Runner:
    """A prepared variant at a fixed batch: ``predict(host array) -> host logits`` and
    ``on_device(launches)`` (input resident, ``launches`` calls, one synchronise)."""

    variant: GpuVariant
    batch: int
    predict: Callable[[np.ndarray], np.ndarray]
    on_device: Callable[[int], None]
    prepare_s: float = 0.0  # compile / capture / warm-up seconds, untimed


@dataclass
class GpuRow:
    """One line of ``gpu.md``: a model, a variant, a batch; both timings and the accuracy."""

    net: str
    variant: str
    precision: str
    batch: int
    side: int
    host_ms: float | None = None
    host_img_s: float | None = None
    device_ms: float | None = None
    device_img_s: float | None = None
    speedup: float | None = None  # device img/s over eager FP32 at the same batch
    top1: float | None = None
    agreement: float | None = None  # top-1 agreement with ONNX Runtime FP32 on the CPU
    prepare_s: float | None = None
    skipped: str = ""


#: Key of ``gpu.json`` recording, per network, the model file a run timed (:func:`measured_model`).
MODELS_KEY = "models"


def measured_model(model: ShippedModel) -> dict:
    """What a GPU run records of a model it timed: its ONNX file's sha256 and the test top-1 its
    release recorded, so that rows measured on an earlier release cannot pass for the current one."""
    return {"onnx_sha256": sha256(model.onnx), "test_top1_recorded": model.test_top1}


def unavailable_reason() -> str | None:
    """Why the GPU rows cannot run here (None when torch sees a CUDA device)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install -e .[train])"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    return None


def precision_note() -> str:
    """What FP32 means in these rows: torch's version and whether cuDNN may use TF32."""
    import torch

    tf32 = "on (cuDNN's default)" if torch.backends.cudnn.allow_tf32 else "off"
    return f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}: TF32 convolutions {tf32} in the FP32 rows"


def runner(model, variant: GpuVariant, batch: int, side: int, device: str = "cuda", warmup: int = 3) -> Runner:
    """``model`` (an eval-mode ``nn.Module``, float32, on the CPU; left untouched) prepared as
    ``variant`` for ``batch`` images of ``side`` x ``side`` on ``device``."""
    import copy

    import torch

    if variant.needs_cuda and device != "cuda":
        raise ValueError(f"{variant.name} needs CUDA")
    start = time.perf_counter()
    dtype = torch.float16 if variant.precision == "fp16" else torch.float32
    memory = torch.channels_last if variant.channels_last else torch.contiguous_format
    net = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=memory).eval()
    if variant.compile_mode is not None:
        # one compiled graph per model copy and batch: a run holds more than dynamo's default 8
        for option in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, option):
                setattr(torch._dynamo.config, option, max(64, getattr(torch._dynamo.config, option)))
        net = torch.compile(net, mode=variant.compile_mode, dynamic=False)
    static_in = torch.zeros(batch, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=memory)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    graph = None
    if variant.cuda_graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                forward(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = net(static_in)

    def launch(x: torch.Tensor) -> torch.Tensor:
        if graph is None:
            return forward(x)
        static_in.copy_(x)
        graph.replay()
        return static_out

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def one_batch(x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n < batch:  # a fixed-shape graph: pad with zeros, drop the padding's scores
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), x.dtype)])
        host = torch.from_numpy(np.ascontiguousarray(x))
        on_gpu = host.to(device).to(dtype=dtype, memory_format=memory)
        out = launch(on_gpu).float().cpu()  # synchronises
        return out.numpy()[:n].copy()

    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([one_batch(x[i : i + batch]) for i in range(0, max(len(x), 1), batch)])

    def on_device(launches: int) -> None:
        for _ in range(launches):
            launch(static_in)
        sync()

    for _ in range(warmup):  # compiles (torch.compile), records (reduce-overhead), picks cuDNN algorithms
        predict(np.zeros((batch, 3, side, side), np.float32))
        on_device(1)
    return Runner(variant, batch, predict, on_device, time.perf_counter() - start)


def one_line_error(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, at most ``limit`` characters of the message (a table cell)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


def launches_for(batch: int, images: int = 64) -> int:
    """Back-to-back calls per ``device`` timing step: about ``images`` images per step, so that
    batch 1 is not one launch's latency."""
    return max(1, images // batch)


def measure(runners: list[Runner], x: np.ndarray, iters: int, warmup: int = 2) -> list[tuple[Timing, Timing]]:
    """(host timing, device timing) of every runner, all at one batch: the host steps
    interleaved, then the device steps interleaved."""
    batch = runners[0].batch
    if any(r.batch != batch for r in runners):
        raise ValueError("measure() times runners of one batch size together")
    launches = launches_for(batch)
    host = time_interleaved([lambda r=r: r.predict(x) for r in runners], batch, iters, warmup, settle_s=0.0)
    device = time_interleaved([lambda r=r: r.on_device(launches) for r in runners], batch * launches, iters, warmup, settle_s=0.0)
    return list(zip(host, device, strict=True))


def top1_and_agreement(r: Runner, images: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Top-1 of ``r`` on ``images`` against ``labels``, and agreement with ``reference`` (top-1 indices)."""
    pred = r.predict(images).argmax(1)
    return float((pred == labels).mean()), float((pred == reference).mean())


def speedups(rows: list[GpuRow]) -> None:
    """Fill ``speedup``: device img/s over eager FP32 of the same net at the same batch."""
    for row in rows:
        base = next(
            (b for b in rows if (b.net, b.batch, b.variant, b.precision) == (row.net, row.batch, EAGER_FP32.name, "fp32")),
            None,
        )
        if base and base.device_img_s and row.device_img_s:
            row.speedup = round(row.device_img_s / base.device_img_s, 2)


def fastest(rows: list[GpuRow], net: str, batch: int) -> GpuRow | None:
    """The row of ``net`` at ``batch`` with the highest device throughput."""
    timed = [r for r in rows if r.net == net and r.batch == batch and r.device_img_s]
    return max(timed, key=lambda r: r.device_img_s or 0.0, default=None)


def rows_for(
    net: str,
    model,
    images: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    batches: tuple[int, ...] = BATCHES,
    variants: tuple[GpuVariant, ...] = VARIANTS,
    iters: int = 30,
    progress: Callable[[str], None] = print,
    device: str = "cuda",
) -> list[GpuRow]:
    """Every variant of ``model`` (``net``'s rebuilt PyTorch model) at every batch, timed per
    batch side by side, with top-1 on (``images``, ``labels``) and agreement with
    ``reference`` top-1 indices, measured with the largest batch's runners."""
    import torch

    side = images.shape[-1]
    rows: list[GpuRow] = []
    accuracy: dict[GpuVariant, tuple[float, float]] = {}
    for batch in sorted(batches, reverse=True):  # the largest first: it gives the accuracy
        runners, failed = [], []
        for v in variants:
            progress(f"{net}: preparing {v.name} {v.precision} at batch {batch}")
            try:
                runners.append(runner(model, v, batch, side, device))
            except Exception as exc:  # a backend that fails here is a row with its reason, not a crash
                failed.append(GpuRow(net, v.name, v.precision, batch, side, skipped=one_line_error(exc)))
        if not runners:
            rows += failed
            continue
        for r in runners:
            if r.variant not in accuracy:
                accuracy[r.variant] = top1_and_agreement(r, images, labels, reference)
        progress(f"{net}: timing {len(runners)} variants at batch {batch}")
        x = fixed_batch(images, batch)
        for r, (host, resident) in zip(runners, measure(runners, x, iters), strict=True):
            top1, agreement = accuracy[r.variant]
            row = GpuRow(net, r.variant.name, r.variant.precision, batch, side, top1=round(top1, 4), agreement=round(agreement, 4))
            row.host_ms, row.host_img_s = round(host.median_ms, 3), round(host.img_s, 1)
            row.device_ms, row.device_img_s = round(resident.median_ms / launches_for(batch), 3), round(resident.img_s, 1)
            row.prepare_s = round(r.prepare_s, 1)
            rows.append(row)
        rows += failed
        del runners
        if device == "cuda":
            torch.cuda.empty_cache()
    order = {(v.name, v.precision): i for i, v in enumerate(variants)}
    rows.sort(key=lambda r: (r.batch, order.get((r.variant, r.precision), len(order))))
    speedups(rows)
    return rows


def table(rows: list[GpuRow], machine: dict, notes: list[str]) -> str:
    """``gpu.md``: one table per model, the rows that could not run with their reason, the
    fastest variant per model and batch, and the notes."""
    batches = sorted({r.batch for r in rows if r.batch})
    calls = "/".join(str(launches_for(b)) for b in batches)
    out = [
        f"GPU rows on {one_line(machine)}.",
        "",
        f"On the GPU: input resident, {calls} back-to-back calls at batch {'/'.join(map(str, batches))}, then one synchronise. "
        "Host to host: float32 host array in, float32 logits on the host out (pageable copies). Both: median ms per batch "
        "of interleaved iterations. Speed-up: on the GPU, against eager FP32 of the same model at the same batch. Top-1 on "
        "the test split and top-1 agreement with ONNX Runtime FP32 on the CPU, at the largest batch. Prepare: compile / "
        "capture / warm-up seconds (not timed).",
    ]
    for net in dict.fromkeys(r.net for r in rows):
        out += [
            "",
            f"### {net}",
            "",
            "| variant | precision | batch | input | on the GPU ms/batch | img/s | host to host ms/batch | img/s "
            "| speed-up | top-1 | agreement | prepare s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r.net == net):
            if r.skipped:
                dashes = " | ".join("–" * 7)
                out.append(f"| {r.variant} | {r.precision} | {r.batch or '–'} | {r.side}px | skipped: {r.skipped} | {dashes} |")
                continue
            speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "–"
            cells = [
                r.variant, r.precision, str(r.batch), f"{r.side}px", cell(r.device_ms, ".2f"), cell(r.device_img_s, ".0f"),
                cell(r.host_ms, ".2f"), cell(r.host_img_s, ".0f"), speedup, cell(r.top1, ".4f"), cell(r.agreement, ".4f"),
                cell(r.prepare_s, ".0f"),
            ]  # fmt: skip
            out.append("| " + " | ".join(cells) + " |")
        best = [
            f"batch {b}: {f.variant} {f.precision.upper()} ({f.device_img_s:.0f} img/s)" for b in batches if (f := fastest(rows, net, b))
        ]
        if best:
            out += ["", f"Fastest for {net} on the GPU: " + "; ".join(best) + "."]
    return "\n".join([*out, "", *(f"- {n}" for n in notes), ""])
