"""The ceiling diagnostic: the best threshold is found on the photos themselves, a confident
mistake lowers it, and the ungated probabilities are the served file's logits before its
typicality gate (same answers, never less confident)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from wastesort.contract import PreprocessContract
from wastesort.data import scan_classes_of
from wastesort.evaluation import split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.labels import LABELS
from wastesort.shipped import LOGITS, ShippedModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling  # noqa: E402


def _probabilities(confidence: list[float], right: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Two-class rows with the given top probabilities; the label is the top class where ``right``."""
    p = np.array([[c, 1.0 - c] for c in confidence])
    return p, np.array([0 if r else 1 for r in right])


def test_the_ceiling_answers_every_photo_above_the_mistakes() -> None:
    p, y = _probabilities([0.99 - 0.01 * i for i in range(10)], [True] * 9 + [False])
    best = ceiling.ceiling(p, y, target=0.98, coverage=0.9)
    assert best["ceiling"]["coverage"] == pytest.approx(0.9) and best["ceiling"]["accuracy_answered"] == 1.0
    assert best["accuracy_at_coverage"] == 1.0


def test_a_confident_mistake_caps_what_any_threshold_answers() -> None:
    p, y = _probabilities([0.99 - 0.01 * i for i in range(10)], [False] + [True] * 9)
    best = ceiling.ceiling(p, y, target=0.98, coverage=0.9)
    assert best["ceiling"]["coverage"] == 0.0  # every set of the most confident holds the mistake
    assert best["accuracy_at_coverage"] == pytest.approx(8 / 9)
    assert ceiling.ceiling(p, y, target=0.85)["ceiling"]["coverage"] == pytest.approx(1.0)


def test_ungated_probabilities_keep_the_served_answers(synthetic_root: Path, tmp_path: Path) -> None:
    model = ShippedModel()
    x, _ = split_tensors(scan_classes_of(synthetic_root, LABELS).samples[::20], PreprocessContract.from_onnx(str(model.onnx)))
    served = OnnxClassifier(model.onnx).probabilities(x)
    ungated = ceiling.Ungated(model.onnx, tmp_path).probabilities(x)
    assert ceiling.ungated_logits_name(onnx.load(str(model.onnx))) != LOGITS
    assert np.array_equal(served.argmax(1), ungated.argmax(1))
    assert np.all(ungated.max(1) >= served.max(1) - 1e-6)
    assert np.any(ungated.max(1) > served.max(1) + 1e-3)  # synthetic images are unlike TrashNet: the gate flattened them


def test_a_file_without_the_gate_is_named_as_such() -> None:
    node = onnx.helper.make_node("Identity", ["x"], [LOGITS])
    graph = onnx.helper.make_graph(
        [node], "plain", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6])],
        [onnx.helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT, [1, 6])],
    )  # fmt: skip
    with pytest.raises(ValueError, match="not gated"):
        ceiling.ungated_logits_name(onnx.helper.make_model(graph))


def test_the_per_class_ceiling_is_the_best_of_every_choice_of_thresholds() -> None:
    """Against brute force: every number of most confident photos answered in each predicted class."""
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.dirichlet(np.ones(3) * 0.7, size=14)
        y = np.where(rng.random(14) < 0.75, p.argmax(1), rng.integers(0, 3, 14))
        predicted, top = p.argmax(1), p.max(1)
        ranked = [np.flatnonzero(predicted == c)[np.argsort(-top[predicted == c], kind="stable")] for c in range(3)]
        best = 0
        for ks in itertools.product(*[range(len(r) + 1) for r in ranked]):
            chosen = np.concatenate([r[:k] for r, k in zip(ranked, ks, strict=True)]).astype(int)
            if len(chosen) and (predicted[chosen] == y[chosen]).mean() >= 0.8:
                best = max(best, len(chosen))
        assert ceiling.per_class_ceiling(p, y, target=0.8)["coverage"] == pytest.approx(best / 14)
        assert ceiling.per_class_ceiling(p, y, target=0.8)["coverage"] >= ceiling.ceiling(p, y, target=0.8)["ceiling"]["coverage"] - 1e-9
