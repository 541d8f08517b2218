"""Markdown tables for docs/reliability.md from what ``reliability/run.py`` measured."""

from __future__ import annotations

import re
from pathlib import Path

from wastesort.reliability.probes import Outcome
from wastesort.reliability.soak import SoakResult

BEGIN, END = "<!-- reliability-results:begin -->", "<!-- reliability-results:end -->"


def _cell(text: str, limit: int = 160) -> str:
    text = re.sub(r"\s+", " ", text).replace("|", "\\|")
    text = re.sub(r"^\[request id: <id_unknown>\] ", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def matrix_table(by_protocol: dict[str, list[Outcome]]) -> str:
    """One row per probe: what was sent, to which model, the response on each protocol, and
    the server's message (HTTP's; gRPC's is the same text)."""
    protocols = list(by_protocol)
    first = by_protocol[protocols[0]]
    head = ["input", "model", "expected", *[f"{p} response" for p in protocols], "message / check", "ready after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, outcome in enumerate(first):
        others = [by_protocol[p][i] for p in protocols]
        responses = [f"{o.status}{'' if o.passed else ' **FAIL**: ' + _cell(o.why, 80)}" for o in others]
        check = outcome.message if not outcome.answered else "answered"
        if "max_abs_diff" in outcome.detail:
            check = f"answered; max abs diff vs reference input {outcome.detail['max_abs_diff']:.1g} (allowed {outcome.probe.atol:g})"
        ready = "yes" if all(o.ready_after for o in others) else "**no**"
        expected = "classified" if outcome.probe.expect == "ok" else "rejected"
        lines.append(
            f"| {_cell(outcome.probe.what)} | {outcome.probe.model} | {expected} | "
            + " | ".join(responses)
            + f" | {_cell(check)} | {ready} |"
        )
    return "\n".join(lines)


def soak_table(results: list[SoakResult]) -> str:
    head = [
        "protocol",
        "images/request",
        "concurrency",
        "duration",
        "requests",
        "images",
        "img/s",
        "errors",
        "p50 ms",
        "p99 ms",
        "max ms",
        "memory after warm-up",
        "memory at end",
        "fitted growth",
        "holds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r.summary()
        lines.append(
            f"| {r.protocol} | {r.batch} | {r.concurrency} | {r.duration_s / 60:.1f} min | {r.requests} | {r.images} | "
            f"{s['throughput_img_s']:.0f} | {r.errors} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} | "
            f"{s['memory_start_mb']:.0f} MB | {s['memory_end_mb']:.0f} MB | {s['memory_growth_mb']:+.1f} MB "
            f"({s['memory_slope_mb_per_min']:+.2f} MB/min) | {'yes' if r.memory_holds and not r.errors else '**no**'} |"
        )
    return "\n".join(lines)


def faults_table(rows: list[dict[str, str]]) -> str:
    head = ["fault injected", "what the server did", "what the client saw", "survived"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append(f"| {_cell(row['fault'], 300)} | {_cell(row['server'], 400)} | {_cell(row['client'], 300)} | {row['survived']} |")
    return "\n".join(lines)


def update_doc(doc: Path, body: str, markers: tuple[str, str] = (BEGIN, END)) -> bool:
    """Replace the text between the result ``markers`` of ``doc`` with ``body``; False when
    the markers are missing."""
    begin, end = markers
    text = doc.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{body.strip()}\n{end}{tail}")
    return True
