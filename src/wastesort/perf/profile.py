"""Where ONNX Runtime spends its time: per-op-type totals from its own profiler.

:func:`op_type_ms` runs a model with ``SessionOptions.enable_profiling`` and sums the ``Node``
events of the trace (``dur`` in microseconds) by ``args.op_name``.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort


def op_type_ms(path: Path, x: np.ndarray, runs: int = 10) -> dict[str, float]:
    """Mean milliseconds per run spent in each op type (largest first) on float32 batch ``x``."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        session.run(None, {name: x})  # warm-up, not counted below
        for _ in range(runs):
            session.run(None, {name: x})
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    node_events = [e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(node_events) // (runs + 1) if node_events else 0
    warm_events = node_events[:per_run]
    for event in node_events[len(warm_events) :]:
        totals[event["args"].get("op_name", "?")] += event["dur"] / 1000.0
    return dict(sorted(((k, v / runs) for k, v in totals.items()), key=lambda kv: -kv[1]))


def profile_table(models: dict[str, Path], x: np.ndarray, runs: int = 10, top: int = 8) -> str:
    """Markdown: for each model, the op types taking the most time per batch (ms and share)."""
    out = [f"ONNX Runtime op-type profile (CPU, batch {len(x)}, mean of {runs} runs after one warm-up).", ""]
    for label, path in models.items():
        times = op_type_ms(path, x, runs)
        total = sum(times.values())
        out += [f"**{label}** (`{path.name}`): {total:.1f} ms in kernels per batch", "", "| op type | ms | share |", "|---|---|---|"]
        out += [f"| {op} | {ms:.2f} | {ms / total:.0%} |" for op, ms in list(times.items())[:top]]
        rest = sum(list(times.values())[top:])
        if rest:
            out.append(f"| (other) | {rest:.2f} | {rest / total:.0%} |")
        out.append("")
    return "\n".join(out)
