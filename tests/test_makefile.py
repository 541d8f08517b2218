"""The Makefile's MODEL knob reaches the scripts as ``--net`` (dry run, nothing executed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["build", "perf", "perf-quick"])
def test_model_knob_becomes_net_argument(target: str) -> None:
    for model, expected in (("mobilenet_v3_small", "--net mobilenet_v3_small"), ("", None)):
        out = subprocess.run(
            ["make", "-n", "-o", "setup", "-o", ".venv/.installed", target, f"MODEL={model}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        line = next(x for x in out.splitlines() if "/run.py" in x or "/build.py" in x)
        if expected:
            assert expected in line
        else:
            assert "--net" not in line


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_science_targets_reach_their_scripts() -> None:
    def dry(*args: str) -> str:
        return subprocess.run(
            ["make", "-n", "-o", "setup", "-o", ".venv/.installed", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    assert 'train/sweep.py --data "d" --trials 3' in dry("sweep", "DATA=d", "SWEEP_ARGS=--trials 3")
    assert "train/explain.py --net mobilenet_v3_small" in dry("explain", "MODEL=mobilenet_v3_small")
    assert "--run" not in dry("compress")
    assert "train/compress.py --run runs/x" in dry("compress", "RUN=runs/x")
    qat = dry("qat", "MODEL=mobilenet_v3_small", "DATA=d", "QAT_ARGS=--epochs 2")
    assert 'train/qat.py --net mobilenet_v3_small --data "d" --epochs 2' in qat
    assert 'perf/gpu.py --nets mobilenet_v3_small --data "d" --quick' in dry(
        "perf-gpu", "MODEL=mobilenet_v3_small", "DATA=d", "PERF_GPU_ARGS=--quick"
    )
    assert "--nets" not in dry("perf-gpu")
    soup = dry("soup", "INGREDIENTS=runs/a models/m.onnx", "RUN=runs/s", "DATA=d", "SOUP_ARGS=--recipe uniform")
    assert 'train/soup.py --ingredients runs/a models/m.onnx --out runs/s --data "d" --recipe uniform' in soup
