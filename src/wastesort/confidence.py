"""Calibrated probabilities and the "unsure" decision, carried inside the ONNX file.

A classifier trained on one look (TrashNet's white board) is confidently wrong on photos from
elsewhere; a recycling line needs the service to say when it is unsure, so that those items go
to a person. Two parts, both fitted on the validation split and never on test:

* **Temperature scaling** (Guo et al., ICML 2017): ``LOGITS / T`` with the ``T`` that minimises
  the negative log-likelihood on val. It is written into the classifier head's weights and bias
  (:func:`calibrate_onnx`), so ``LOGITS``, ``PROBABILITIES = softmax(LOGITS)``, every precision
  variant and the image-plus-mirror graph carry it, the top-1 answer stays the same, and the
  reliability of the probabilities is reported as the expected calibration error (:func:`ece`).
* **The threshold**: a photo is answered when its top probability is at least ``threshold``,
  else it is *unsure*. :func:`choose_threshold` picks the lowest threshold whose accuracy among
  answered val photos reaches ``target`` (the coverage the target allows, no more).

:class:`Confidence` is the record, stored under :data:`METADATA_KEY` in the file's metadata;
the generated Triton configs copy the threshold into a parameter (:data:`THRESHOLD_PARAMETER`)
that the client and the serving models read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

#: ONNX ``metadata_props`` key of the :class:`Confidence` record (JSON).
METADATA_KEY = "confidence"
#: Triton config parameter (ensemble and classifier) holding the threshold the models serve with.
THRESHOLD_PARAMETER = "unsure_below"
#: Accuracy among answered photos the threshold is chosen for, on val.
TARGET_ACCURACY = 0.98
#: Bins of the expected calibration error.
ECE_BINS = 15


class CalibrationError(ValueError):
    """The file cannot be calibrated: no single classifier head, or already calibrated."""


@dataclass(frozen=True)
class Confidence:
    """How a file's probabilities were calibrated and when its answers count as unsure."""

    temperature: float
    threshold: float
    target_accuracy: float = TARGET_ACCURACY
    fitted_on: str = "val"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Confidence:
        return cls(**json.loads(text))

    def unsure(self, probabilities: np.ndarray) -> np.ndarray:
        """bool ``(N,)``: which rows of ``probabilities`` ``(N, C)`` are below the threshold."""
        return unsure(probabilities, self.threshold)


def unsure(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """bool ``(N,)``: rows whose top probability is below ``threshold``."""
    return np.asarray(probabilities).max(axis=-1) < threshold


def recorded(path: str | Path) -> Confidence | None:
    """The :class:`Confidence` stored in ``path``'s metadata, or ``None``."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return Confidence.from_json(props[METADATA_KEY]) if METADATA_KEY in props else None


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising :func:`nll` (searched over ``log T`` in ``[-3, 3]``)."""
    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


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


def _head(proto: onnx.ModelProto, num_classes: int) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    """The classifier head's weight and bias initializers: the one Gemm whose bias is a
    ``(num_classes,)`` initializer."""
    inits = {t.name: t for t in proto.graph.initializer}
    heads = [
        (inits[n.input[1]], inits[n.input[2]])
        for n in proto.graph.node
        if n.op_type == "Gemm" and len(n.input) == 3 and n.input[1] in inits and n.input[2] in inits
        and tuple(inits[n.input[2]].dims) == (num_classes,)
    ]  # fmt: skip
    if len(heads) != 1:
        raise CalibrationError(f"expected one classifier-head Gemm with a ({num_classes},) bias, found {len(heads)}")
    return heads[0]


def scale_head(proto: onnx.ModelProto, num_classes: int, factor: float) -> None:
    """Multiply the classifier head's weight and bias by ``factor`` in place (``LOGITS`` scale
    by it; the top-1 answer is unchanged)."""
    for tensor in _head(proto, num_classes):
        tensor.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(tensor) * np.float32(factor)).astype(np.float32), tensor.name))


def calibrate_onnx(path: Path, confidence: Confidence, out: Path | None = None) -> Path:
    """Divide ``path``'s logits by ``confidence.temperature`` (in the head's weights) and record
    ``confidence`` in its metadata; write ``out`` (default: in place). Raises
    :class:`CalibrationError` for a file already calibrated."""
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY in props:
        raise CalibrationError(f"{Path(path).name} is already calibrated ({props[METADATA_KEY]})")
    labels = json.loads(props["labels"])
    scale_head(proto, len(labels), 1.0 / confidence.temperature)
    proto.metadata_props.add(key=METADATA_KEY, value=confidence.to_json())
    onnx.checker.check_model(proto, full_check=True)
    out = out or path
    onnx.save(proto, str(out))
    return out


def with_threshold(path: Path, threshold: float, out: Path | None = None) -> Path:
    """Rewrite only the threshold of a calibrated file's record (a variant's own choice)."""
    proto = onnx.load(str(path))
    props = {p.key: p for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise CalibrationError(f"{Path(path).name} carries no calibration")
    record = json.loads(props[METADATA_KEY].value) | {"threshold": float(threshold)}
    props[METADATA_KEY].value = json.dumps(record, sort_keys=True)
    out = out or path
    onnx.save(proto, str(out))
    return out


def softmax_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64 (the fitting side's view of the file)."""
    return softmax(np.asarray(logits, np.float64) / temperature, axis=1)
