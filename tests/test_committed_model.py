"""The trained model(s) committed under models/: valid, self-describing, and reproducing
their recorded test accuracy on the committed split (that part needs ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from wastesort.data import DatasetError
from wastesort.inference import OnnxClassifier
from wastesort.labels import LABELS
from wastesort.paths import DEFAULT_TRASHNET, MODELS_DIR
from wastesort.preprocess import preprocess_file
from wastesort.shipped import ShippedModel
from wastesort.synthetic import make_image

MODELS = sorted(p for p in MODELS_DIR.glob("*.onnx") if p.suffixes == [".onnx"])  # not the .tta.onnx variants


def test_a_trained_model_is_committed() -> None:
    assert MODELS, f"no ONNX model under {MODELS_DIR}"


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_committed_model_is_valid_and_self_describing(path: Path, tmp_path: Path) -> None:
    assert path.stat().st_size < 20 * 1024 * 1024
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    clf = OnnxClassifier(path)
    assert clf.labels == LABELS
    img = make_image("glass", np.random.default_rng(0))
    img.save(tmp_path / "x.jpg")
    probs = clf.probabilities(np.stack([preprocess_file(str(tmp_path / "x.jpg"), clf.contract)] * 3))
    assert probs.shape == (3, 6) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    for suffix in (".manifest.csv", ".metrics.json", ".export.json"):
        assert path.with_suffix(suffix).is_file(), f"{path.stem}{suffix} missing"


@pytest.mark.skipif(not DEFAULT_TRASHNET.is_dir(), reason=f"real TrashNet photos not found at {DEFAULT_TRASHNET}")
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_committed_model_reproduces_its_test_accuracy(path: Path) -> None:
    recorded = ShippedModel(path.stem).test_top1
    try:
        test = ShippedModel(path.stem).split("test")
    except DatasetError as exc:
        pytest.skip(str(exc))
    clf = OnnxClassifier(path)
    x = np.stack([preprocess_file(str(s.path), clf.contract) for s in test])
    accuracy = float((clf.probabilities(x).argmax(1) == np.array([s.label for s in test])).mean())
    assert abs(accuracy - recorded) <= 1.0 / len(test) + 1e-9, (accuracy, recorded)
