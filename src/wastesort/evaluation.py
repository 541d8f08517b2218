"""How the project scores a model, in one place: a split turned into the tensors the server would
see (:func:`split_tensors`), one set of metrics from true and predicted classes
(:func:`classification_metrics`, scikit-learn) with percentile bootstrap intervals over the photos
(:func:`with_interval`), and an ONNX file evaluated on those tensors (:func:`evaluate`).

Training, release, the build's gate, the benchmarks and the studies all call these, so a figure
means the same thing wherever it is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from wastesort.contract import PreprocessContract
from wastesort.data import Sample
from wastesort.inference import OnnxClassifier
from wastesort.preprocess import preprocess_files

#: Confidence level and resample count of the bootstrap intervals.
CONFIDENCE = 0.95
RESAMPLES = 2000


def split_tensors(samples: Sequence[Sample], contract: PreprocessContract, desc: str = "photos") -> tuple[np.ndarray, np.ndarray]:
    """``samples`` as the server would see them: float32 ``(N, 3, H, W)`` inputs through the
    serving preprocessing, and their true class indices."""
    return preprocess_files([s.path for s in samples], contract, desc=desc), np.array([s.label for s in samples], dtype=np.int64)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix."""
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def intervals(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """``{"top1": [low, high], "f1": {class: [low, high]}}``: :data:`CONFIDENCE` percentile
    bootstrap intervals over the photos (each resample draws photos with their true and predicted
    labels; ``seed`` makes it repeatable)."""

    def statistic(t: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
        """Top-1 and each class's F1 (scikit-learn's, zero where the class is absent from both)
        of every resample at once."""
        t, p = np.moveaxis(t, axis, -1), np.moveaxis(p, axis, -1)
        rows = [np.mean(t == p, axis=-1)]
        for c in range(len(classes)):
            tp = np.sum((t == c) & (p == c), axis=-1)
            wrong = np.sum((t == c) != (p == c), axis=-1)  # false positives and false negatives
            rows.append(np.where(2 * tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0))
        return np.stack(rows)

    ci = bootstrap(
        (np.asarray(y_true), np.asarray(y_pred)),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    bounds = [[float(lo), float(hi)] for lo, hi in zip(ci.low, ci.high, strict=True)]
    return {"top1": bounds[0], "f1": dict(zip(classes, bounds[1:], strict=True))}


def with_interval(metrics: dict, classes: tuple[str, ...], resamples: int = RESAMPLES) -> dict:
    """``metrics`` (:func:`classification_metrics`) with its :func:`intervals` as ``interval``,
    drawn from the photos its confusion matrix counts."""
    matrix = np.asarray(metrics["confusion_matrix"])
    true, pred = np.nonzero(matrix)
    counts = matrix[true, pred]
    return {**metrics, "interval": intervals(np.repeat(true, counts), np.repeat(pred, counts), classes, resamples)}


@dataclass
class Evaluation:
    """One model on one split: top-1, macro and per-class F1 (:func:`classification_metrics`);
    ``predictions`` are top-1 class indices, ``probabilities`` the model's output (``None`` for a
    backend that gives only labels)."""

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


def score(pred: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], probabilities: np.ndarray | None = None) -> Evaluation:
    """The :class:`Evaluation` of top-1 predictions ``pred`` against ``labels`` (any backend)."""
    metrics = classification_metrics(labels, pred, class_names)
    per_class = {name: m["f1"] for name, m in metrics["per_class"].items()}
    return Evaluation(metrics["accuracy"], metrics["macro_f1"], per_class, pred, probabilities)


def evaluate(path: Path, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Evaluation:
    """Run the ONNX file ``path`` (ONNX Runtime, CPU) on preprocessed ``images`` (float32
    ``(N, 3, H, W)``, :func:`split_tensors`) with true ``labels``."""
    probabilities = OnnxClassifier(path).probabilities(images)
    return score(probabilities.argmax(1), labels, class_names, probabilities)
