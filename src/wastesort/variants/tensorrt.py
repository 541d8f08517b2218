"""TensorRT plans (FP32, FP16, INT8) built with Polygraphy's Python API, plus the equivalent
``trtexec`` command lines.

A plan is built for one GPU and one TensorRT version: the server refuses plans from another
TensorRT version, so plans are built in the container of the same release as the server
(``docker-compose.yml``, service ``build``) and each plan is recorded next to it
(``model.plan.json``: TensorRT version, GPU name, compute capability, settings).

Everything up to the GPU call (settings, profiles, calibration feed, command lines) runs and is
tested anywhere; :func:`unavailable_reason` says in one line why a build cannot run here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wastesort.shipped import IMAGES, PROBABILITIES
from wastesort.variants.calibration import polygraphy_feed

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PlanSettings:
    """One plan: precision, an optimisation profile over the batch range the Triton config
    allows (``min_batch``..``max_batch``, tuned for ``opt_batch``), workspace and caches."""

    precision: str
    height: int
    width: int
    input_name: str = IMAGES
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 64
    workspace_mib: int = 1024
    calibration_batch: int = 20

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, {self.max_batch}")

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, self.height, self.width)

    def trtexec_command(self, onnx: Path, plan: Path, calibration_cache: Path | None = None, timing_cache: Path | None = None) -> list[str]:
        """The ``trtexec`` command that builds the same plan (INT8 reuses Polygraphy's calibration cache)."""
        dims = {
            name: "x".join(map(str, self.shape(b)))
            for name, b in (("min", self.min_batch), ("opt", self.opt_batch), ("max", self.max_batch))
        }
        cmd = [
            "trtexec",
            f"--onnx={onnx}",
            f"--saveEngine={plan}",
            f"--minShapes={self.input_name}:{dims['min']}",
            f"--optShapes={self.input_name}:{dims['opt']}",
            f"--maxShapes={self.input_name}:{dims['max']}",
            f"--memPoolSize=workspace:{self.workspace_mib}M",
        ]
        if self.precision in ("fp16", "int8"):
            cmd.append("--fp16")  # INT8 plans keep FP16 for layers that stay in floating point
        if self.precision == "int8":
            cmd.append("--int8")
            if calibration_cache is not None:
                cmd.append(f"--calib={calibration_cache}")
        if timing_cache is not None:
            cmd.append(f"--timingCacheFile={timing_cache}")
        return cmd

    def polygraphy_config(self, calibrator: object | None = None, timing_cache: Path | None = None):
        """Polygraphy ``CreateConfig`` for this plan. INT8 plans need ``calibrator`` (see
        :meth:`calibrator`) to build; without one the config can still be inspected."""
        from polygraphy.backend.trt import CreateConfig, Profile

        profile = Profile().add(
            self.input_name, min=self.shape(self.min_batch), opt=self.shape(self.opt_batch), max=self.shape(self.max_batch)
        )
        return CreateConfig(
            fp16=self.precision in ("fp16", "int8"),
            int8=self.precision == "int8",
            calibrator=calibrator,
            profiles=[profile],
            load_timing_cache=str(timing_cache) if timing_cache else None,
            memory_pool_limits=self._workspace(),
        )

    def calibration_feed(self, calibration: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Feed dicts for Polygraphy's calibrator: whole batches of the serving-preprocessed images."""
        return list(polygraphy_feed(self.input_name, calibration, self.calibration_batch))

    def calibrator(self, calibration: np.ndarray, cache: Path):
        """Polygraphy ``Calibrator`` (TensorRT's entropy calibrator) writing ``cache``; needs TensorRT."""
        from polygraphy.backend.trt import Calibrator

        return Calibrator(data_loader=self.calibration_feed(calibration), cache=str(cache))

    def _workspace(self) -> dict | None:
        try:
            import tensorrt as trt
        except ImportError:  # settings can still be inspected without TensorRT
            return None
        return {trt.MemoryPoolType.WORKSPACE: self.workspace_mib << 20}


def unavailable_reason() -> str | None:
    """None when TensorRT plans can be built here, else the one-line reason they cannot."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install tensorrt, or build in NVIDIA's container: docker compose run build)"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU (nvidia-smi not found); a plan is built on the GPU it will run on"
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    if probe.returncode != 0 or "GPU" not in probe.stdout:
        return f"no usable NVIDIA GPU: {probe.stderr.strip() or probe.stdout.strip()}"
    return None


def gpu_description() -> dict[str, str]:
    """TensorRT version, GPU name and compute capability, recorded next to each plan."""
    import tensorrt

    query = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"], capture_output=True, text=True, check=True
    )
    name, cc, driver = (part.strip() for part in query.stdout.splitlines()[0].split(","))
    return {"tensorrt": tensorrt.__version__, "gpu": name, "compute_capability": cc, "driver": driver}


def build_plan(onnx: Path, plan: Path, settings: PlanSettings, calibration: np.ndarray | None, cache_dir: Path) -> dict[str, object]:
    """Build and save one plan; writes ``<plan>.json`` and returns what it recorded."""
    from polygraphy.backend.trt import engine_from_network, network_from_onnx_path, save_engine

    cache_dir.mkdir(parents=True, exist_ok=True)
    timing = cache_dir / "timing.cache"
    calib = cache_dir / "int8_calibration.cache"
    calibrator = None
    if settings.precision == "int8":
        if calibration is None:
            raise ValueError("an INT8 plan needs calibration images")
        calibrator = settings.calibrator(calibration, calib)
    config = settings.polygraphy_config(calibrator, timing if timing.exists() else None)
    engine = engine_from_network(network_from_onnx_path(str(onnx)), config=config, save_timing_cache=str(timing))
    plan.parent.mkdir(parents=True, exist_ok=True)
    save_engine(engine, path=str(plan))
    record = {
        **gpu_description(),
        "settings": asdict(settings),
        "onnx": str(onnx),
        "trtexec": " ".join(settings.trtexec_command(onnx, plan, calib if settings.precision == "int8" else None, timing)),
    }
    Path(f"{plan}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def probabilities(plan: Path, images: np.ndarray, input_name: str = IMAGES, batch_size: int = 64) -> np.ndarray:
    """Run a plan on the GPU through Polygraphy's ``TrtRunner``: float32 ``(N, C)`` probabilities."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    outs = []
    with TrtRunner(EngineFromBytes(BytesFromPath(str(plan)))) as runner:
        for i in range(0, len(images), batch_size):
            outs.append(np.asarray(runner.infer({input_name: np.ascontiguousarray(images[i : i + batch_size])})[PROBABILITIES]))
    return np.concatenate(outs)
