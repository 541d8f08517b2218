"""The benchmark harness behind ``perf/run.py``, timed with :mod:`wastesort.timing` on the machine
:mod:`wastesort.machine` describes: the in-process rows (:mod:`.inprocess`, :mod:`.torch_model`), the GPU rows (:mod:`.gpu`), ONNX
Runtime profiles (:mod:`.profile`), perf_analyzer (:mod:`.analyzer`) and the outputs (:mod:`.report`)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, obj: object) -> None:
    """``obj`` as indented JSON (anything else as its string), the one format of every results file."""
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
