"""In-process candidates of the throughput table, each with its top-1 on the test split.

Every model candidate is a ``predict`` function: float32 ``(N, 3, H, W)`` host array (the
serving preprocessing's output) in, float32 ``(N, C)`` scores back on the host. On a GPU the
input is copied to the device and the result back inside the call, after synchronising, so
every backend is timed the same way: host tensor to host result. The two byte-level
candidates take encoded JPEG/PNG bytes: ``preprocess`` (bytes to tensor, one thread, i.e.
per core) and ``pipeline`` (bytes to label in one process: a decode thread pool the size of
the machine, then ONNX Runtime FP32, as a self-hosted service would run it).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score

from wastesort.contract import PreprocessContract
from wastesort.inference import OnnxClassifier
from wastesort.preprocess import preprocess_batch
from wastesort.shipped import IMAGES, LOGITS, PROBABILITIES

#: The ``backend`` of the preprocessing row (bytes to tensor, no model).
PREPROCESS_BACKEND = "preprocess"


@dataclass
class Candidate:
    """One row of the in-process table. ``predict`` maps a batch to scores (model rows) or
    encoded images to top-1 indices (``pipeline``) or to tensors (``preprocess``)."""

    name: str
    backend: str
    precision: str
    device: str
    predict: Callable
    inputs: str = "tensor"  # "tensor" or "bytes"
    resolution: int | None = None  # input side when it differs from the model's own
    note: str = ""
    close: Callable[[], None] = field(default=lambda: None)
    threads: int | None = None  # cores the row may use, where it sets them


@dataclass(frozen=True)
class Skipped:
    """A row that could not run here, and why (one line)."""

    name: str
    backend: str
    precision: str
    device: str
    reason: str


def torch_candidates(onnx_path: Path, net: str, num_classes: int, check_images: np.ndarray, batch: int = 64) -> list[Candidate | Skipped]:
    """PyTorch eager on the CPU (default layout and channels-last, both under
    ``torch.inference_mode``; the faster is the baseline) and, when present, on CUDA (each compile-free GPU variant of
    :mod:`wastesort.perf.gpu` prepared for ``batch``; ``make perf-gpu`` times them all at
    several batches), with the weights of ``onnx_path``; the rebuilt model is checked against
    ONNX Runtime on ``check_images`` first."""
    try:
        import torch
    except ImportError:
        return [Skipped("PyTorch eager", "pytorch", "fp32", "cpu", "torch is not installed (pip install -e .[train])")]

    from wastesort.perf import gpu
    from wastesort.perf.torch_model import check_against_onnx, torch_from_onnx

    model = torch_from_onnx(onnx_path, net, num_classes)
    diff = check_against_onnx(model, onnx_path, check_images[:8])
    note = f"torchvision {net}, weights from the ONNX file (max logit diff {diff:.1e})"

    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def on_cpu(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    def on_cpu_channels_last(x: np.ndarray) -> np.ndarray:  # the input's conversion is part of the timed work
        with torch.inference_mode():
            return channels_last(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    rows: list[Candidate | Skipped] = [
        Candidate("PyTorch eager", "pytorch", "fp32", "cpu", on_cpu, note=note),
        Candidate("PyTorch eager, channels-last", "pytorch", "fp32", "cpu", on_cpu_channels_last, note=note),
    ]
    reason = gpu.unavailable_reason()
    if reason:
        return [*rows, Skipped("PyTorch eager", "pytorch", "fp32", "cuda", reason)]
    for v in gpu.QUICK_VARIANTS:
        r = gpu.runner(model, v, batch, check_images.shape[-1])
        rows.append(Candidate(f"PyTorch {v.name}", "pytorch", v.precision, "cuda", r.predict, note=f"{note}; host array in and out"))
    return rows


def ort_candidate(name: str, path: Path, precision: str, device: str = "cpu", threads: int = 0) -> Candidate | Skipped:
    """ONNX Runtime on CPU (the project's session settings, worker spin-waiting off as the server
    runs it: with spinning workers the rows of an interleaved run take cores from each other,
    and the INT8 model, with more and shorter kernels, suffered most) or CUDA."""
    import onnxruntime as ort

    if device != "cpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return Skipped(
            name, "onnxruntime", precision, device, "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)"
        )
    if not path.exists():
        return Skipped(name, "onnxruntime", precision, device, f"{path} not built (make build)")
    if device == "cpu":
        classifier = OnnxClassifier(path, threads=threads, spinning=False)
        run = lambda x: classifier.run([LOGITS], x)[0]  # noqa: E731
        return Candidate(name, "onnxruntime", precision, device, run, note=str(path), threads=threads or None)
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return Candidate(name, "onnxruntime", precision, device, lambda x: session.run([LOGITS], {input_name: x})[0], note=str(path))


def openvino_candidate(name: str, path: Path, precision: str, threads: int = 0) -> Candidate | Skipped:
    """OpenVINO on the CPU reading the same ONNX file (an INT8 QDQ file runs as OpenVINO's own
    low-precision graph), float32 inference precision pinned so FP32 means FP32, the
    throughput hint (one batch fills the cores) and ``threads`` inference threads (0: all)."""
    if not path.exists():
        return Skipped(name, "openvino", precision, "cpu", f"{path} not built (make build)")
    try:
        import openvino as ov
    except ImportError:
        return Skipped(name, "openvino", precision, "cpu", "openvino is not installed (pip install -e .[perf])")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    logits = compiled.output(LOGITS)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[logits])

    note = f"OpenVINO {ov.get_version().split('-')[0]}: {path}"
    return Candidate(name, "openvino", precision, "cpu", predict, note=note, threads=threads or None)


def tensorrt_candidate(name: str, plan: Path, precision: str) -> Candidate | Skipped:
    """A TensorRT plan through Polygraphy's ``TrtRunner`` (host arrays in and out)."""
    from wastesort.variants.tensorrt import unavailable_reason

    reason = unavailable_reason() or (None if plan.exists() else f"{plan} not built (make build on the GPU)")
    if reason is not None:
        return Skipped(name, "tensorrt", precision, "cuda", reason)
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    runner = TrtRunner(EngineFromBytes(BytesFromPath(str(plan))))
    runner.activate()

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(runner.infer({IMAGES: x}, copy_outputs_to_host=True)[LOGITS])

    return Candidate(name, "tensorrt", precision, "cuda", predict, note=str(plan), close=runner.deactivate)


def free_resolution_onnx(onnx_path: Path, out: Path) -> Path:
    """A copy of ``onnx_path`` whose input height and width are symbolic, for timing the same
    weights at another resolution (MobileNetV3 is fully convolutional up to a global pool)."""
    import onnx

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, name in ((2, "height"), (3, "width")):
        dims[axis].ClearField("dim_value")
        dims[axis].dim_param = name
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def at_resolution(rows: list[Candidate | Skipped], side: int) -> list[Candidate | Skipped]:
    """Mark candidates as timed at ``side`` x ``side`` (their inputs must be made at that size)."""
    for row in rows:
        if isinstance(row, Candidate):
            row.resolution = side
            row.note = f"at {side}x{side}, the seed's resolution (not the one the model was trained at); {row.note}"
    return rows


def _decoded(batch: tuple[np.ndarray, list[BaseException | None]]) -> np.ndarray:
    """The batch of :func:`preprocess_batch`, or the first image's error."""
    images, errors = batch
    for error in errors:
        if error is not None:
            raise error
    return images


def preprocess_candidate(contract: PreprocessContract, threads: int | None = None, name: str = "preprocessing") -> Candidate:
    """Encoded images to the model's input tensor on a pool of ``threads`` (default: one per
    core, as the Triton ``preprocess`` model decodes a batch); per core = img/s / ``threads``."""
    workers = threads or len(os.sched_getaffinity(0))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")

    def predict(encoded: list[bytes]) -> np.ndarray:
        return _decoded(preprocess_batch(encoded, contract, pool))

    note = f"wastesort.preprocess.preprocess_batch (as the preprocess model), {decoder_name(contract)}, {workers} threads"
    return Candidate(name, PREPROCESS_BACKEND, "-", "cpu", predict, inputs="bytes", note=note, close=pool.shutdown, threads=workers)


def decoder_name(contract: PreprocessContract) -> str:
    """The decoder a contract selects, in words."""
    if contract.interpolation == "area":
        return f"libjpeg-turbo (simplejpeg, DCT scaling to {contract.jpeg_draft_floor:g} of the input) + OpenCV INTER_AREA"
    return f"Pillow decode + {contract.interpolation} resize"


def pipeline_candidate(
    onnx_path: Path,
    precision: str = "fp32",
    threads: int | None = None,
    name: str = "pipeline (bytes to label)",
    model_side: int | None = None,
) -> Candidate:
    """Encoded images to top-1 class indices in one process: decode pool (the model's own
    preprocessing contract), then ONNX Runtime (spin-waiting off, as served). When
    ``model_side`` is given and this ONNX file's input side differs (another model in the
    same run), the row's ``resolution`` says its own side."""
    classifier = OnnxClassifier(onnx_path, spinning=False)
    side = classifier.contract.height
    workers = threads or len(os.sched_getaffinity(0))
    pool = ThreadPoolExecutor(workers)

    def predict(encoded: list[bytes]) -> np.ndarray:
        x = _decoded(preprocess_batch(encoded, classifier.contract, pool))
        return classifier.run([PROBABILITIES], x)[0].argmax(1)

    note = f"{workers} decode threads + ONNX Runtime {precision.upper()} ({onnx_path.name})"
    resolution = side if model_side is not None and side != model_side else None
    return Candidate(name, "onnxruntime", precision, "cpu", predict, inputs="bytes", resolution=resolution, note=note, close=pool.shutdown)


def top1(candidate: Candidate, images: np.ndarray, encoded: list[bytes], labels: np.ndarray, batch: int) -> float | None:
    """Top-1 of a model or pipeline candidate over the whole test split (None for preprocessing)."""
    if candidate.backend == PREPROCESS_BACKEND:
        return None
    preds = []
    for i in range(0, len(labels), batch):
        if candidate.inputs == "bytes":
            preds.append(np.asarray(candidate.predict(encoded[i : i + batch])))
        else:
            preds.append(np.asarray(candidate.predict(np.ascontiguousarray(images[i : i + batch]))).argmax(1))
    return float(accuracy_score(labels, np.concatenate(preds)))
