"""Calibration and the unsure decision: temperature scaling lowers the calibration error of a set
with known over-confidence, the threshold is the most coverage the target allows, the
temperature goes into the head (same answers, scaled logits, recorded once), a rebuilt network
undoes it, the generated configs carry the threshold a file records, and the committed model's
typicality flattens images unlike any photo below the threshold without losing their top-1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_model import CONTRACT, Tiny

from wastesort import confidence as conf
from wastesort.inference import OnnxClassifier
from wastesort.labels import LABELS
from wastesort.shipped import IMAGES, LOGITS, PROBABILITIES, ShippedModel
from wastesort.training import calibrate as cal
from wastesort.training.export import FlipAveraged, export_onnx
from wastesort.triton import config as tc


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax at temperature 1 is over-confident: drawn from a model whose true
    probabilities are ``softmax(z)``, then multiplied by 3."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, len(LABELS)))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(len(LABELS), p=row) for row in p])
    return 3.0 * z, labels


def test_temperature_scaling_lowers_the_calibration_error_of_an_overconfident_set() -> None:
    logits, labels = _overconfident()
    temperature = cal.fit_temperature(logits[:2000], labels[:2000])
    assert temperature == pytest.approx(3.0, rel=0.15)  # it finds the factor the logits were inflated by
    before = conf.ece(cal.softmax_probabilities(logits[2000:]), labels[2000:])
    after = conf.ece(cal.softmax_probabilities(logits[2000:], temperature), labels[2000:])
    assert before > 0.1 and after < before / 3
    assert cal.nll(logits[2000:], labels[2000:], temperature) < cal.nll(logits[2000:], labels[2000:])


def test_the_threshold_is_the_most_coverage_the_target_allows() -> None:
    # ten photos, most confident first; the 4th and the 9th are wrong
    top = np.array([0.99, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6])
    probabilities = np.stack([top, 1 - top, *np.zeros((4, 10))], 1)
    labels = np.zeros(10, int)
    labels[[3, 8]] = 1
    assert conf.choose_threshold(probabilities, labels, 0.875) == pytest.approx(0.75)  # 7 of the first 8 right
    assert conf.choose_threshold(probabilities, labels, 0.8) == pytest.approx(0.6)  # 8 of 10
    assert conf.choose_threshold(probabilities, labels, 1.0) == pytest.approx(0.95)  # before the first wrong one
    figures = conf.selective(probabilities, labels, 0.75)
    assert figures == {"photos": 10, "coverage": 0.8, "accuracy_answered": 0.875, "answered_wrong": 0.1}
    assert conf.unsure(probabilities, 0.75).tolist() == [False] * 8 + [True] * 2
    assert conf.choose_threshold(probabilities[[3]], labels[[3]], 0.98) == 1.0  # nothing reaches it: answer nothing


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("exports")
    model = Tiny().eval()
    tta = export_onnx(FlipAveraged(model).eval(), CONTRACT, folder / "tiny.tta.onnx")
    return export_onnx(model, CONTRACT, folder / "tiny.onnx"), tta


def test_calibration_scales_the_logits_keeps_the_answers_and_is_recorded_once(exports: tuple[Path, Path], tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(16, 3, 32, 32)).astype(np.float32)
    for path in exports:
        before = OnnxClassifier(path).run([LOGITS, PROBABILITIES], x)
        record = conf.Confidence(temperature=0.5, threshold=0.7)
        out = cal.calibrate_onnx(path, record, tmp_path / f"calibrated_{path.name}")
        after = OnnxClassifier(out).run([LOGITS, PROBABILITIES], x)
        np.testing.assert_array_equal(after[1].argmax(1), before[1].argmax(1))
        if path.name == "tiny.onnx":
            np.testing.assert_allclose(after[0], before[0] / 0.5, atol=1e-4)
        else:  # the mirror file's head is scaled inside: the mean of the two calibrated passes
            plain = OnnxClassifier(exports[0]).run([LOGITS], np.concatenate([x, x[..., ::-1]]))[0] / 0.5
            p = np.exp(plain - plain.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            np.testing.assert_allclose(after[1], 0.5 * (p[:16] + p[16:]), atol=1e-5)
        assert conf.read(out) == record
        with pytest.raises(cal.CalibrationError, match="already calibrated"):
            cal.calibrate_onnx(out, record)


def test_the_generated_configs_carry_the_threshold_the_file_records(exports: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "calibrated").mkdir()
    plain = cal.calibrate_onnx(exports[0], conf.Confidence(temperature=0.8, threshold=0.625), tmp_path / "calibrated" / "tiny.onnx")
    files = tc.repository_files(plain, "tiny")
    for name in ("tiny_onnx/config.pbtxt", "ensemble_tiny/config.pbtxt"):
        assert f'key: "{conf.THRESHOLD_PARAMETER}"' in files[name].decode() and 'string_value: "0.625"' in files[name].decode()
    bare = tc.repository_files(exports[0], "tiny")
    assert conf.THRESHOLD_PARAMETER not in bare["ensemble_tiny/config.pbtxt"].decode()  # an uncalibrated file: no decision


def test_atypical_images_are_flattened_below_the_threshold_and_keep_their_top1() -> None:
    path = ShippedModel().onnx
    confidence = conf.read(path)
    if confidence is None or confidence.typicality_gate is None:
        pytest.skip("the committed model carries no typicality")
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    side = 224
    ramp = np.linspace(-1, 1, side, dtype=np.float32)
    images = np.stack(
        [
            rng.normal(0, 1, (3, side, side)).astype(np.float32),  # noise
            np.broadcast_to(np.array([0.9, -0.8, 0.2], np.float32)[:, None, None], (3, side, side)),  # one colour
            np.broadcast_to(ramp[None, None, :] * np.array([1, -1, 0.5], np.float32)[:, None, None], (3, side, side)),  # a gradient
            np.sign(np.sin(np.arange(side, dtype=np.float32) / 3))[None, :, None] * np.ones((3, 1, side), np.float32),  # stripes
        ]
    )
    logits, probabilities = ort.InferenceSession(str(path)).run([LOGITS, PROBABILITIES], {IMAGES: np.ascontiguousarray(images)})
    assert (probabilities.max(1) < confidence.threshold).all(), probabilities.max(1)
    assert (cal.typicality_factor(path, images) > 10).all()  # far beyond the gate: flattened hard
    assert (probabilities.argmax(1) == logits.argmax(1)).all()  # not rounded to a tie, whose top-1 is the first class
    assert len(np.unique(probabilities.round(7), axis=0)) == len(images)
