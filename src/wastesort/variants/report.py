"""The build report: one row per variant, as ``build/report.json`` (for tools) and
``build/report.md`` (for people), committed like ``perf/results/``: the figures of the last ``make build``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class VariantRow:
    """One precision variant and what the build did with it.

    ``top1``/``agreement_with_fp32``/``img_s`` are ``None`` when the variant could not run
    here (for example a TensorRT plan without a GPU); ``installed`` says whether it is in the
    model repository, ``reason`` why it is or is not.
    """

    name: str
    backend: str
    precision: str
    settings: str = ""
    path: str | None = None
    size_mb: float | None = None
    top1: float | None = None
    macro_f1: float | None = None
    per_class_f1: dict[str, float] = field(default_factory=dict)
    agreement_with_fp32: float | None = None
    probability_diff_median: float | None = None
    probability_diff_max: float | None = None
    build_s: float | None = None
    batch: int | None = None
    latency_ms: float | None = None
    img_s: float | None = None
    speedup_vs_fp32: float | None = None
    img_s_1_thread: float | None = None
    speedup_vs_fp32_1_thread: float | None = None
    installed: bool = False
    reason: str = ""


def cell(value: float | None, spec: str) -> str:
    """A Markdown table cell: ``value`` formatted with ``spec``, or a dash when it is missing."""
    return "–" if value is None else format(value, spec)


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _difference(row: VariantRow) -> str:
    if row.probability_diff_max is None:
        return "–"
    return f"{row.probability_diff_median:.5f} / {row.probability_diff_max:.4f}"


def to_markdown(rows: list[VariantRow], title: str, notes: list[str]) -> str:
    lines = [
        f"# {title}",
        "",
        "| variant | backend | precision | size MB | top-1 | macro F1 | agreement with FP32 | "
        "probability difference from FP32, median / max | ms / batch | img/s | vs FP32 | img/s, 1 thread | vs FP32, 1 thread | "
        "build s | installed | reason |",
        "|" + "---|" * 16,
    ]
    for r in rows:
        lines.append(
            f"| `{r.name}` | {r.backend} | {r.precision} | {cell(r.size_mb, '.1f')} | {cell(r.top1, '.4f')} | {cell(r.macro_f1, '.4f')} | "
            f"{cell(r.agreement_with_fp32, '.4f')} | {_difference(r)} | {cell(r.latency_ms, '.1f')} | {cell(r.img_s, '.0f')} | "
            f"{_ratio(r.speedup_vs_fp32)} | {cell(r.img_s_1_thread, '.0f')} | {_ratio(r.speedup_vs_fp32_1_thread)} | "
            f"{cell(r.build_s, '.1f')} | "
            f"{'yes' if r.installed else 'no'} | {r.reason} |"
        )
    settings = [f"- `{r.name}`: {r.settings}" for r in rows if r.settings]
    return "\n".join([*lines, "", *notes, "", "Settings:", "", *settings, ""])


def write_report(rows: list[VariantRow], json_path: Path, md_path: Path, title: str, notes: list[str]) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    md_path.write_text(to_markdown(rows, title, notes))
