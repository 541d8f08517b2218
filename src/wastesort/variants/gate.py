"""The accuracy gate: every variant is evaluated on the test split against the FP32 model, and
timed side by side with it, before it may be served.

Figures: top-1, macro F1 and per-class F1 (scikit-learn), agreement of top-1 with the FP32
model on every test image, and throughput (ONNX Runtime on CPU, median of timed batches).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from wastesort.contract import PreprocessContract
from wastesort.data import Sample
from wastesort.inference import OnnxClassifier
from wastesort.preprocess import preprocess_files

#: A variant may lose at most this many points of top-1 against FP32 (default of ``--threshold``).
DEFAULT_MAX_DROP_POINTS = 1.0


@dataclass
class Evaluation:
    """Accuracy of one model on the test split; ``predictions`` are top-1 class indices."""

    top1: float
    macro_f1: float
    per_class_f1: dict[str, float]
    predictions: np.ndarray = field(repr=False)

    def agreement(self, reference: np.ndarray) -> float:
        """Share of images whose top-1 equals ``reference``'s."""
        return float((self.predictions == reference).mean())


def test_tensors(test: list[Sample], contract: PreprocessContract) -> tuple[np.ndarray, np.ndarray]:
    """The test split as the server would see it: float32 ``(N, 3, H, W)`` inputs (serving
    preprocessing) and the true class indices."""
    return preprocess_files([s.path for s in test], contract, desc="test images"), np.array([s.label for s in test])


def evaluate(path: Path, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Evaluation:
    """Run ``path`` (ONNX, on ONNX Runtime CPU) on preprocessed test ``images`` (float32
    ``(N, 3, H, W)``) with true ``labels``."""
    return score(OnnxClassifier(path).probabilities(images).argmax(1), labels, class_names)


def score(pred: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Evaluation:
    """Accuracy figures of top-1 predictions ``pred`` against ``labels`` (any backend)."""
    per_class = f1_score(labels, pred, labels=list(range(len(class_names))), average=None, zero_division=0)
    return Evaluation(
        top1=float(accuracy_score(labels, pred)),
        macro_f1=float(f1_score(labels, pred, average="macro", zero_division=0)),
        per_class_f1={name: float(v) for name, v in zip(class_names, per_class, strict=True)},
        predictions=pred,
    )


@dataclass(frozen=True)
class Timing:
    """Latency of one batch (ms, median and p90 of ``iters`` runs) and throughput (img/s)."""

    batch: int
    median_ms: float
    p90_ms: float

    @property
    def img_s(self) -> float:
        return self.batch / self.median_ms * 1000.0


def time_batches(
    paths: list[Path], images: np.ndarray, batch: int = 64, iters: int = 20, warmup: int = 3, threads: int = 0
) -> list[Timing]:
    """Time several models on the same batch, interleaved round-robin so that a noisy
    neighbour slows them all alike; returns one :class:`Timing` per path."""
    x = np.ascontiguousarray(images[:batch])
    if len(x) < batch:
        x = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)
    sessions = [OnnxClassifier(p, threads).session for p in paths]
    name = sessions[0].get_inputs()[0].name
    for sess in sessions:
        for _ in range(warmup):
            sess.run(None, {name: x})
    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(iters):
        for i, sess in enumerate(sessions):
            start = time.perf_counter()
            sess.run(None, {name: x})
            samples[i].append((time.perf_counter() - start) * 1000.0)
    return [Timing(batch, statistics.median(s), float(np.percentile(s, 90))) for s in samples]


def gate(candidate: Evaluation, reference: Evaluation, max_drop_points: float = DEFAULT_MAX_DROP_POINTS) -> tuple[bool, str]:
    """(passes, reason): a variant passes when its top-1 is at most ``max_drop_points`` below FP32."""
    drop = (reference.top1 - candidate.top1) * 100.0
    if drop > max_drop_points:
        return False, f"top-1 {candidate.top1:.4f} is {drop:.2f} points below FP32 {reference.top1:.4f} (limit {max_drop_points:.2f})"
    return True, f"top-1 within {max_drop_points:.2f} points of FP32 ({-drop:+.2f})"
