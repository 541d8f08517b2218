"""The "unsure" decision and how calibrated a model's probabilities are (numpy only: the client,
the serving models and the release share it).

A classifier trained on one look (TrashNet's white board) is confidently wrong on photos from
elsewhere; a recycling line needs the service to say when it is unsure, so that those items go
to a person. A photo is answered when its top probability is at least the model's threshold,
else it is *unsure*. The threshold is chosen on the validation split (:func:`choose_threshold`)
for a target accuracy among the answered photos, after the probabilities were calibrated by
temperature scaling (:mod:`wastesort.training.calibrate`, which writes the temperature into the
classifier head). :class:`Confidence` is the record a calibrated ONNX file carries under
:data:`METADATA_KEY`; the generated Triton configs copy its threshold into
:data:`THRESHOLD_PARAMETER`, which the client and the serving models read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: ONNX ``metadata_props`` key of the :class:`Confidence` record (JSON).
METADATA_KEY = "confidence"
#: Triton config parameter (ensemble and classifier) holding the threshold the models serve with.
THRESHOLD_PARAMETER = "unsure_below"
#: Accuracy among answered photos the threshold is chosen for, on val.
TARGET_ACCURACY = 0.98
#: Prefix of the graph nodes and initialisers that compute a photo's typicality (the INT8
#: build keeps them in float: a quantised quadratic form would not rank photos the same way).
TYPICALITY_PREFIX = "typicality_"
#: Bins of the expected calibration error.
ECE_BINS = 15


@dataclass(frozen=True)
class Confidence:
    """How a file's probabilities were calibrated and when its answers count as unsure."""

    temperature: float
    threshold: float
    target_accuracy: float = TARGET_ACCURACY
    fitted_on: str = "val"
    #: where the photos' typicality starts to flatten the probabilities (``None``: not used)
    typicality_gate: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Confidence:
        return cls(**json.loads(text))

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> Confidence | None:
        """The record in an ONNX file's metadata map, or ``None`` for an uncalibrated file."""
        return cls.from_json(props[METADATA_KEY]) if METADATA_KEY in props else None

    def unsure(self, probabilities: np.ndarray) -> np.ndarray:
        """bool ``(N,)``: which rows of ``probabilities`` ``(N, C)`` are below the threshold."""
        return unsure(probabilities, self.threshold)


def unsure(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """bool ``(N,)``: rows whose top probability is below ``threshold``."""
    return np.asarray(probabilities).max(axis=-1) < threshold


def read(path: str | Path) -> Confidence | None:
    """The :class:`Confidence` an ONNX file carries (read with onnxruntime), or ``None``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return Confidence.from_metadata(session.get_modelmeta().custom_metadata_map)


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the photo-weighted mean gap between the top probability and
    the accuracy in equal-width bins of the top probability."""
    probabilities = np.asarray(probabilities)
    top, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(top, edges[1:-1], right=True), 0, bins - 1)
    gap = sum(abs(top[which == b].mean() - correct[which == b].mean()) * np.sum(which == b) for b in range(bins) if np.any(which == b))
    return float(gap / len(top))


def selective(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """What a threshold does on photos with known labels: the share answered (coverage), the
    accuracy among the answered, and the share of all photos answered wrongly."""
    probabilities = np.asarray(probabilities)
    answered = ~unsure(probabilities, threshold)
    right = probabilities.argmax(axis=1) == labels
    n = len(labels)
    return {
        "photos": int(n),
        "coverage": float(answered.mean()) if n else 0.0,
        "accuracy_answered": float(right[answered].mean()) if answered.any() else 1.0,
        "answered_wrong": float((answered & ~right).mean()) if n else 0.0,
    }


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, target: float = TARGET_ACCURACY) -> float:
    """The lowest threshold (one of the photos' own top probabilities) at which the accuracy
    among the answered photos is still at least ``target``: the most coverage the target allows.
    1.0 when no set of the most confident photos reaches it."""
    probabilities = np.asarray(probabilities)
    top = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    order = np.argsort(-top, kind="stable")
    accuracy = np.cumsum(right[order]) / np.arange(1, len(order) + 1)  # among the k most confident, for every k
    passing = np.flatnonzero(accuracy >= target)
    return float(top[order][passing[-1]]) if len(passing) else 1.0
