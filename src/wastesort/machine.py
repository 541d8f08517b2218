"""What a benchmark ran on, saved with every result: CPU model, cores, instruction-set flags
that matter to ONNX Runtime, memory, GPU and driver, and the library versions."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

#: Packages whose versions change the figures.
PACKAGES = (
    "numpy",
    "pillow",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "torchvision",
    "tritonclient",
    "nvidia-pytriton",
    "tensorrt",
    "polygraphy",
)
#: CPU flags worth knowing when reading CPU figures (INT8 needs VNNI to be fast).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    present = set(flags.group(1).split()) if flags else set()
    return {"model": model.group(1).strip() if model else platform.processor(), "flags": " ".join(f for f in CPU_FLAGS if f in present)}


def _memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.M)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def gpus() -> list[dict[str, str]]:
    """One entry per GPU from ``nvidia-smi`` (name, driver, memory, compute capability); empty
    when there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return []
    keys = query.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")), strict=False)) for line in out.stdout.splitlines() if line.strip()]


def versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (absent ones left out)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def host_name() -> str:
    """A folder-safe name of this machine."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def describe() -> dict[str, object]:
    """The machine as a JSON-able dict."""
    cpu = _cpuinfo()
    return {
        "host": host_name(),
        "cpu": cpu["model"],
        "cpu_flags": cpu["flags"],
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpus": gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def one_line(machine: dict[str, object]) -> str:
    """``cpu, N cores[, GPU name (driver)]`` for table captions."""
    line = f"{machine['cpu']}, {machine['usable_cores']} cores"
    if machine.get("cpu_flags"):
        line += f" ({machine['cpu_flags']})"
    for gpu in machine.get("gpus") or []:
        line += f"; {gpu.get('name')} (driver {gpu.get('driver_version')}, CC {gpu.get('compute_cap')})"
    return line
