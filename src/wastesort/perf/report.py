"""Benchmark outputs under ``perf/results/<host>/``: ``table.md`` (in-process, in the seed
project's form), ``served.md`` (perf_analyzer), ``summary.json``, ``machine.json`` and PNG plots.

``summary.json`` keys: ``machine``, ``settings``, ``inprocess`` (one object per row: name,
backend, precision, device, batch, median/p90/p99 ms per batch, img_s, speedup, top1, or a
``skipped`` reason), ``served`` (best point per model, protocol and request size within the
latency budget, with the server-side breakdown), and ``ratios`` (``None`` when a side of a
ratio did not run): the target figures of :data:`TARGETS` and ``ort_fp32_over_torch``,
``served_over_inprocess_fp32``; plus ``targets``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wastesort.machine import one_line
from wastesort.perf.analyzer import ServedPoint, best_within
from wastesort.perf.inprocess import PREPROCESS_BACKEND
from wastesort.variants.report import cell

#: The targets on this 2-core CPU: (ratio key, minimum, what it means).
TARGETS = (
    (
        "served_over_inprocess",
        0.90,
        "served INT8 ensemble (one pass per photo) / in-process pipeline with the same decoder and model, bytes to label",
    ),
    ("preprocess_img_s_per_core", 1000.0, "JPEG bytes to tensor per second per core, every core decoding as the server does"),
    ("int8_over_fp32", 2.0, "ONNX Runtime INT8 / FP32 throughput at the benchmark batch, all cores (CPU)"),
    ("int8_over_fp32_1_thread", 2.0, "the same on one thread"),
    ("best_cpu_over_torch", 6.0, "the fastest CPU model row / the faster PyTorch eager FP32 layout, same photos and batch"),
)


#: Backends of the model rows (the fastest-runtime line and ``best_cpu_over_torch`` choose among them).
MODEL_BACKENDS = ("pytorch", "onnxruntime", "openvino")


@dataclass
class InprocessRow:
    """One in-process figure: latency per batch (ms), throughput (img/s), speed-up against the
    stated baseline row, top-1 on the test split; or ``skipped`` with the reason."""

    name: str
    backend: str
    precision: str
    device: str
    batch: int | None = None
    resolution: int | None = None
    iters: int | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    img_s: float | None = None
    speedup: float | None = None
    top1: float | None = None
    note: str = ""
    skipped: str = ""
    threads: int | None = None  # threads the row was limited to (None: the runtime's default, all cores)


@dataclass
class ServedSweep:
    """perf_analyzer points of one model over one protocol at one request size."""

    model: str
    kind: str  # "ensemble" (JPEG bytes in) or "classifier" (preprocessed tensors in)
    protocol: str
    request_batch: int
    points: list[ServedPoint] = field(default_factory=list)
    error: str = ""

    def best(self, p99_budget_ms: float) -> ServedPoint | None:
        return best_within(self.points, p99_budget_ms)

    def label(self) -> str:
        return f"{self.model} {self.protocol} b{self.request_batch}"


def find_row(
    rows: list[InprocessRow],
    backend: str,
    precision: str,
    device: str = "cpu",
    resolution: int | None = None,
    name: str | None = None,
    threads: int | None = None,
) -> InprocessRow | None:
    """The first row that ran with this backend, precision, device, resolution, thread limit
    (and name prefix)."""
    return next(
        (
            r
            for r in rows
            if (r.backend, r.precision, r.device, r.resolution, r.threads) == (backend, precision, device, resolution, threads)
            and not r.skipped
            and (name is None or r.name.startswith(name))
        ),
        None,
    )


def torch_baseline(rows: list[InprocessRow], resolution: int | None = None) -> InprocessRow | None:
    """The baseline of every "x PyTorch" ratio: the fastest PyTorch eager FP32 row on the CPU
    at ``resolution`` (default layout or channels-last: the setting a user would pick)."""
    eager = [r for r in rows if (r.backend, r.precision, r.device, r.resolution) == ("pytorch", "fp32", "cpu", resolution)]
    return max((r for r in eager if r.img_s and not r.skipped), key=lambda r: r.img_s or 0.0, default=None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def fastest(rows: list[InprocessRow], precision: str) -> InprocessRow | None:
    """The fastest CPU model row at ``precision`` and the model's own resolution, all cores."""
    models = [r for r in rows if r.img_s and r.device == "cpu" and r.precision == precision and not r.resolution]
    models = [r for r in models if r.threads is None and r.backend in MODEL_BACKENDS and not r.name.startswith("pipeline")]
    return max(models, key=lambda r: r.img_s or 0.0, default=None)


def ratios(
    rows: list[InprocessRow], sweeps: list[ServedSweep], p99_budget_ms: float, ensembles: dict[str, str] | None = None
) -> dict[str, float | None]:
    """The target figures from one run's rows. ``ensembles`` maps a pipeline precision to the
    ensemble serving that model (``served_over_inprocess`` is the INT8 pair when it ran, else
    FP32), each at its best protocol and request size within the budget."""
    torch_cpu = torch_baseline(rows)
    ort_fp32 = find_row(rows, "onnxruntime", "fp32", name="ONNX Runtime")
    int8 = find_row(rows, "onnxruntime", "int8", name="ONNX Runtime")
    pre = find_row(rows, PREPROCESS_BACKEND, "-", threads=next((r.threads for r in rows if r.backend == PREPROCESS_BACKEND), None))
    best = max((r for r in (fastest(rows, "fp32"), fastest(rows, "int8")) if r), key=lambda r: r.img_s or 0.0, default=None)
    seed_side = next((r.resolution for r in rows if r.resolution and r.backend == "pytorch"), None)
    torch_seed = torch_baseline(rows, seed_side) if seed_side else None
    ort_seed = find_row(rows, "onnxruntime", "fp32", resolution=seed_side, name="ONNX Runtime") if seed_side else None
    served = {}
    for precision, ensemble in (ensembles or {}).items():
        pipeline = find_row(rows, "onnxruntime", precision, name="pipeline (bytes to label)")
        points = [p for s in sweeps if s.kind == "ensemble" and s.model == ensemble for p in [s.best(p99_budget_ms)] if p is not None]
        best_served = max((p.infer_per_s for p in points), default=None)
        served[precision] = _ratio(best_served, pipeline.img_s if pipeline else None)
    return {
        "served_over_inprocess": served.get("int8") if served.get("int8") is not None else served.get("fp32"),
        "served_over_inprocess_fp32": served.get("fp32"),
        "preprocess_img_s_per_core": round(pre.img_s / (pre.threads or 1), 1) if pre and pre.img_s else None,
        "int8_over_fp32": _ratio(int8.img_s if int8 else None, ort_fp32.img_s if ort_fp32 else None),
        "int8_over_fp32_1_thread": _ratio(
            *(
                r.img_s if r else None
                for r in (
                    find_row(rows, "onnxruntime", "int8", name="ONNX Runtime", threads=1),
                    find_row(rows, "onnxruntime", "fp32", name="ONNX Runtime", threads=1),
                )
            )
        ),
        "best_cpu_over_torch": _ratio(best.img_s if best else None, torch_cpu.img_s if torch_cpu else None),
        "ort_fp32_over_torch": _ratio(ort_fp32.img_s if ort_fp32 else None, torch_cpu.img_s if torch_cpu else None),
        "ort_fp32_over_torch_seed_resolution": _ratio(ort_seed.img_s if ort_seed else None, torch_seed.img_s if torch_seed else None),
    }


def target_lines(values: dict[str, float | None]) -> list[str]:
    """One line per target: value, target, met / missed / not measured."""
    lines = []
    for key, minimum, meaning in TARGETS:
        value = values.get(key)
        status = "not measured" if value is None else ("met" if value >= minimum else "MISSED")
        shown = "–" if value is None else f"{value:g}"
        lines.append(f"{key} = {shown} (target >= {minimum:g}: {status}) — {meaning}")
    return lines


def inprocess_table(rows: list[InprocessRow], machine: dict, baseline: str, model_side: int) -> str:
    """``table.md``: backend, precision, latency ms/batch, img/s, speed-up, accuracy."""
    out = [
        f"In-process throughput on {one_line(machine)}.",
        "",
        f"Latency per batch: median (p90 / p99). Speed-up against {baseline} at the same input size. Top-1 on the test split.",
        "",
        "| row | backend | precision | device | batch | input | latency ms/batch | img/s | speed-up | top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.skipped:
            out.append(f"| {r.name} | {r.backend} | {r.precision} | {r.device} | – | – | skipped: {r.skipped} | – | – | – |")
            continue
        latency = f"{r.median_ms:.1f} ({r.p90_ms:.1f} / {r.p99_ms:.1f})"
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "–"
        side = f"{r.resolution or model_side}px" if r.backend != PREPROCESS_BACKEND else "JPEG"
        cells = [r.name, r.backend, r.precision, r.device, str(r.batch), side, latency, cell(r.img_s, ".0f"), speedup, cell(r.top1, ".4f")]
        out.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.name} ({r.device}): {r.note}" for r in rows if r.note and not r.skipped]
    best = [f"{p.upper()}: {r.name} ({r.backend}, {r.img_s:.0f} img/s)" for p in ("fp32", "int8") if (r := fastest(rows, p))]
    fastest_line = [f"Fastest on the CPU, all cores, at the model's input size: {'; '.join(best)}.", ""] if best else []
    return "\n".join([*out, "", *fastest_line, *notes, ""])


def served_table(sweeps: list[ServedSweep], p99_budget_ms: float, machine: dict) -> str:
    """``served.md``: best throughput within the p99 budget per model/protocol/request size."""
    out = [
        f"Served through Triton (perf_analyzer on the same machine) on {one_line(machine)}.",
        "",
        f"Best throughput with p99 <= {p99_budget_ms:g} ms; latency and the server-side split (average per request, ms) at that point.",
        "",
        "| model | input | protocol | images/request | concurrency | img/s | p50 ms | p99 ms "
        "| queue | compute input | compute infer | compute output |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sweeps:
        kind = "JPEG bytes" if s.kind == "ensemble" else "tensor"
        best = s.best(p99_budget_ms)
        if best is None:
            why = s.error or f"no level within p99 {p99_budget_ms:g} ms"
            out.append(f"| {s.model} | {kind} | {s.protocol} | {s.request_batch} | – | – | – | – | {why} | | | |")
            continue
        b = best.breakdown_ms()
        out.append(
            f"| {s.model} | {kind} | {s.protocol} | {s.request_batch} | {best.concurrency} | {best.infer_per_s:.0f} | "
            f"{best.p50_us / 1000:.1f} | {best.p99_ms:.1f} | {b['queue']:.2f} | {b['compute_input']:.2f} | {b['compute_infer']:.2f} | "
            f"{b['compute_output']:.2f} |"
        )
    return "\n".join([*out, ""])


def summary(
    machine: dict,
    settings: dict,
    rows: list[InprocessRow],
    sweeps: list[ServedSweep],
    p99_budget_ms: float,
    ensembles: dict[str, str] | None = None,
) -> dict[str, object]:
    """The ``summary.json`` object (``ensembles``: see :func:`ratios`)."""
    values = ratios(rows, sweeps, p99_budget_ms, ensembles)
    served = []
    for s in sweeps:
        best = s.best(p99_budget_ms)
        served.append(
            {
                "model": s.model,
                "kind": s.kind,
                "protocol": s.protocol,
                "request_batch": s.request_batch,
                "img_s": None if best is None else best.infer_per_s,
                "concurrency": None if best is None else best.concurrency,
                "p99_ms": None if best is None else best.p99_ms,
                "server_breakdown_ms": None if best is None else best.breakdown_ms(),
                "error": s.error,
            }
        )
    return {
        "machine": machine,
        "settings": settings,
        "inprocess": [asdict(r) for r in rows],
        "served": served,
        "ratios": values,
        "targets": {
            key: {"minimum": minimum, "value": values[key], "met": None if values[key] is None else values[key] >= minimum}
            for key, minimum, _ in TARGETS
        },
    }


def plot_served(sweeps: list[ServedSweep], out_dir: Path, p99_budget_ms: float) -> list[Path]:
    """``served_throughput.png`` (img/s against concurrency) and ``served_latency.png``
    (p50/p90/p99 against concurrency), one line per model, protocol and request size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [s for s in sweeps if s.points]
    if not drawn:
        return []
    paths = []
    kinds = [k for k in ("ensemble", "classifier") if any(s.kind == k for s in drawn)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 6), squeeze=False)
    levels = sorted({p.concurrency for s in drawn for p in s.points})
    for ax, kind in zip(axes[0], kinds, strict=True):
        mine = [s for s in drawn if s.kind == kind]
        colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(mine), 2)))
        for s, color in zip(mine, colors, strict=False):
            style = "-" if s.protocol == "grpc" else "--"
            ax.plot([p.concurrency for p in s.points], [p.infer_per_s for p in s.points], style, marker="o", color=color, label=s.label())
        title = "ensembles: JPEG bytes in" if kind == "ensemble" else "classifiers: tensors in"
        ax.set(xscale="log", xlabel="concurrency (requests in flight)", ylabel="images / s", title=title)
        ax.set_xticks(levels, labels=[str(c) for c in levels])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.suptitle("Served throughput (perf_analyzer; solid gRPC, dashed HTTP)")
    paths.append(out_dir / "served_throughput.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(drawn), figsize=(3.2 * len(drawn), 3.6), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], drawn, strict=True):
        levels = [p.concurrency for p in s.points]
        for attr, name in (("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99")):
            ax.plot(levels, [getattr(p, attr) / 1000 for p in s.points], marker=".", label=name)
        ax.axhline(p99_budget_ms, color="red", lw=0.8, ls="--", label="p99 budget")
        ax.set(xscale="log", title=s.label(), xlabel="concurrency")
        ax.set_title(s.label(), fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("latency ms")
    axes[0][0].legend(fontsize=7)
    paths.append(out_dir / "served_latency.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def plot_inprocess(rows: list[InprocessRow], out_dir: Path) -> Path | None:
    """``inprocess_throughput.png``: img/s per row, labelled with top-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in rows if not r.skipped and r.img_s]
    if not ran:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(ran) + 1.5))
    labels = [f"{r.name} {r.precision} {r.device}" for r in ran]
    bars = ax.barh(labels, [r.img_s for r in ran], color="tab:blue")
    for bar, r in zip(bars, ran, strict=True):
        acc = "" if r.top1 is None else f"  top-1 {r.top1:.3f}"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r.img_s:.0f}{acc}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"images / s (batch of {ran[0].batch})", title="In-process throughput")
    ax.margins(x=0.3)
    path = out_dir / "inprocess_throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
