"""The accuracy gate: every variant is evaluated on the test split against the FP32 model, and
timed side by side with it, before it may be served.

Figures: top-1, macro F1 and per-class F1 (scikit-learn), agreement of top-1 with the FP32
model on every test image, and throughput (ONNX Runtime on CPU, median of timed batches).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from wastesort.contract import PreprocessContract
from wastesort.data import Sample
from wastesort.inference import OnnxClassifier
from wastesort.perf.timing import Timing, fixed_batch, time_interleaved
from wastesort.preprocess import preprocess_files
from wastesort.shipped import LOGITS

#: A variant may lose at most this many points of top-1 against FP32 (default of ``--threshold``).
DEFAULT_MAX_DROP_POINTS = 1.0
#: An INT8 variant's probabilities may differ from its FP32 model's by at most this much at the
#: median over the test photos and classes: INT8's own rounding of the network stays under it,
#: a quantised softmax output (steps of 1/255) does not.
MAX_MEDIAN_PROBABILITY_DIFF = 1e-3


@dataclass
class Evaluation:
    """Accuracy of one model on the test split; ``predictions`` are top-1 class indices,
    ``probabilities`` the model's output (``None`` for a backend that gives only labels)."""

    top1: float
    macro_f1: float
    per_class_f1: dict[str, float]
    predictions: np.ndarray = field(repr=False)
    probabilities: np.ndarray | None = field(default=None, repr=False)

    def agreement(self, reference: np.ndarray) -> float:
        """Share of images whose top-1 equals ``reference``'s."""
        return float((self.predictions == reference).mean())

    def probability_difference(self, reference: Evaluation) -> tuple[float, float]:
        """Median and largest absolute difference between this model's probabilities and
        ``reference``'s on the same photos."""
        difference = np.abs(self.probabilities - reference.probabilities)
        return float(np.median(difference)), float(difference.max())


def test_tensors(test: list[Sample], contract: PreprocessContract) -> tuple[np.ndarray, np.ndarray]:
    """The test split as the server would see it: float32 ``(N, 3, H, W)`` inputs (serving
    preprocessing) and the true class indices."""
    return preprocess_files([s.path for s in test], contract, desc="test images"), np.array([s.label for s in test])


def evaluate(path: Path, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Evaluation:
    """Run ``path`` (ONNX, on ONNX Runtime CPU) on preprocessed test ``images`` (float32
    ``(N, 3, H, W)``) with true ``labels``."""
    probabilities = OnnxClassifier(path).probabilities(images)
    return replace(score(probabilities.argmax(1), labels, class_names), probabilities=probabilities)


def score(pred: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Evaluation:
    """Accuracy figures of top-1 predictions ``pred`` against ``labels`` (any backend)."""
    per_class = f1_score(labels, pred, labels=list(range(len(class_names))), average=None, zero_division=0)
    return Evaluation(
        top1=float(accuracy_score(labels, pred)),
        macro_f1=float(f1_score(labels, pred, average="macro", zero_division=0)),
        per_class_f1={name: float(v) for name, v in zip(class_names, per_class, strict=True)},
        predictions=pred,
    )


def time_batches(
    paths: list[Path],
    images: np.ndarray,
    batch: int = 64,
    iters: int = 20,
    warmup: int = 3,
    threads: int = 0,
    spinning: bool = False,
) -> list[Timing]:
    """Time several ONNX models (ONNX Runtime, CPU, ``threads`` intra-op threads, 0: one per
    core) on the same batch with the project's one timing method
    (:func:`wastesort.perf.timing.time_interleaved`); one :class:`Timing` per path.

    ``spinning`` defaults to off, as the server runs its classifier
    (``ServingOptions.ort_spinning``): with spin-waiting workers, a session that just ran
    takes a core from the next one on a 2-core machine, and the ratios measured depend on
    the order of the candidates."""
    x = fixed_batch(images, batch)
    classifiers = [OnnxClassifier(p, threads, spinning) for p in paths]
    return time_interleaved([partial(c.run, [LOGITS], x) for c in classifiers], batch, iters, warmup)


def gate(
    candidate: Evaluation, reference: Evaluation, max_drop_points: float = DEFAULT_MAX_DROP_POINTS, probabilities: bool = False
) -> tuple[bool, str]:
    """(passes, reason): a variant passes when its top-1 is at most ``max_drop_points`` below FP32
    and, with ``probabilities`` (INT8 variants), when the median difference of its probabilities
    from FP32's is at most :data:`MAX_MEDIAN_PROBABILITY_DIFF`."""
    drop = (reference.top1 - candidate.top1) * 100.0
    if drop > max_drop_points:
        return False, f"top-1 {candidate.top1:.4f} is {drop:.2f} points below FP32 {reference.top1:.4f} (limit {max_drop_points:.2f})"
    reason = f"top-1 within {max_drop_points:.2f} points of FP32 ({-drop:+.2f})"
    if probabilities:
        median, _ = candidate.probability_difference(reference)
        if median > MAX_MEDIAN_PROBABILITY_DIFF:
            limit = MAX_MEDIAN_PROBABILITY_DIFF
            return False, f"median probability difference from FP32 {median:.5f} is above {limit:g} (a quantised output?)"
        reason += f", median probability difference from FP32 {median:.5f}"
    return True, reason
