"""Logit adjustment for the class-weighted loss: the offsets, the ONNX edit (plain and TTA
graphs), the refusal to adjust twice, the committed model's record, and the release step on a
small model in a temporary ``models/`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import CONTRACT, Tiny
from torch import nn

from wastesort.data import Sample, read_manifest, scan_image_folder, stratified_split, write_manifest
from wastesort.inference import OnnxClassifier
from wastesort.labels import LABELS
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import LOGITS, PROBABILITIES, ShippedModel
from wastesort.synthetic import generate
from wastesort.training import logit_adjust as la
from wastesort.training.export import FlipAveraged, export_onnx


def _samples(counts: list[int]) -> list[Sample]:
    return [Sample(Path(f"{c}_{i}.jpg"), c, f"{c}-{i}") for c, n in enumerate(counts) for i in range(n)]


def _x(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("adjust")
    model = Tiny().eval()
    return export_onnx(model, CONTRACT, out / "tiny.onnx"), export_onnx(FlipAveraged(model).eval(), CONTRACT, out / "tiny.tta.onnx")


def test_offsets_are_the_centred_log_class_frequencies() -> None:
    counts = [241, 298, 244, 353, 286, 82]
    offsets = la.offsets_for(_samples(counts), len(counts))
    expected = np.log(np.array(counts, float))
    np.testing.assert_allclose(offsets, expected - expected.mean(), atol=1e-6)
    assert offsets.argmin() == 5 and offsets[5] < -1.0  # the rare class is pushed down
    assert np.abs(la.offsets_for(_samples([10] * 6), 6)).max() < 1e-6  # balanced data: no change


def test_adjusted_plain_graph_adds_the_offsets_to_the_logits(exports: tuple[Path, Path], tmp_path: Path) -> None:
    plain = exports[0]
    offsets = np.array([0.5, -0.25, 0.0, 1.0, -0.5, -0.75], np.float32)
    out = la.adjust_onnx(plain, offsets, tmp_path / "adjusted.onnx")
    x = _x()
    before = OnnxClassifier(plain).run([LOGITS], x)[0]
    logits, probs = OnnxClassifier(out).run([LOGITS, PROBABILITIES], x)
    np.testing.assert_allclose(logits, before + offsets, atol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-6)
    assert la.recorded(out)["offsets"] == {c: pytest.approx(float(v)) for c, v in zip(LABELS, offsets, strict=True)}
    assert la.recorded(plain) is None
    assert OnnxClassifier(out).labels == LABELS  # the contract is untouched
    with pytest.raises(la.AdjustError, match="already logit-adjusted"):
        la.adjust_onnx(out, offsets)
    with pytest.raises(la.AdjustError, match="6 classes"):
        la.adjust_onnx(plain, offsets[:3], tmp_path / "bad.onnx")


def test_adjusted_tta_graph_averages_the_adjusted_passes(exports: tuple[Path, Path], tmp_path: Path) -> None:
    plain, tta = exports
    offsets = np.array([0.3, -0.2, 0.1, 0.9, -0.4, -0.7], np.float32)
    plain_adj = la.adjust_onnx(plain, offsets, tmp_path / "p.onnx")
    tta_adj = la.adjust_onnx(tta, offsets, tmp_path / "t.onnx")
    x = _x()
    p = OnnxClassifier(plain_adj)
    expected = (p.run([PROBABILITIES], x)[0] + p.run([PROBABILITIES], np.ascontiguousarray(x[..., ::-1]))[0]) / 2
    np.testing.assert_allclose(OnnxClassifier(tta_adj).run([PROBABILITIES], x)[0], expected, atol=1e-5)


def test_a_graph_without_one_head_gemm_is_refused(tmp_path: Path) -> None:
    class NoGemm(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 2)

    path = export_onnx(NoGemm(), CONTRACT, tmp_path / "nogemm.onnx")
    with pytest.raises(la.AdjustError, match="found 0 among 0 Gemm"):
        la.adjust_onnx(path, np.zeros(6, np.float32))


def test_the_head_is_found_behind_other_dense_layers(tmp_path: Path) -> None:
    """A hidden Linear layer before the head (MobileNetV3, the from-scratch CNN) is left alone."""

    class TwoDense(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.relu(self.hidden(torch.relu(self.conv(x)).mean(dim=(2, 3)))))

    path = export_onnx(TwoDense().eval(), CONTRACT, tmp_path / "two.onnx")
    offsets = np.array([0.5, -0.25, 0.0, 1.0, -0.5, -0.75], np.float32)
    out = la.adjust_onnx(path, offsets, tmp_path / "two_adjusted.onnx")
    x = _x()
    np.testing.assert_allclose(OnnxClassifier(out).run([LOGITS], x)[0], OnnxClassifier(path).run([LOGITS], x)[0] + offsets, atol=1e-5)


@pytest.mark.slow
def test_adjust_shipped_rewrites_the_files_and_the_metrics(exports: tuple[Path, Path], tmp_path: Path) -> None:
    root = generate(tmp_path / "data", per_class=8, seed=3)
    for photo in sorted((root / "trash").iterdir())[:5]:  # trash becomes the rare class
        photo.unlink()
    scan = scan_image_folder(root, LABELS)
    models = tmp_path / "models"
    models.mkdir()
    model = ShippedModel("tiny", models)
    for src, dst in zip(exports, (model.onnx, model.tta_onnx), strict=True):
        dst.write_bytes(src.read_bytes())
    write_manifest(model.manifest, stratified_split(scan.samples, seed=0), LABELS, root)
    model.metrics.write_text(json.dumps({"model": "tiny", "tta": {"kept": True}}))
    record = la.adjust_shipped(model, root)

    train = read_manifest(model.manifest, root)["train"]
    np.testing.assert_allclose(list(record["offsets"].values()), la.offsets_for(train, len(LABELS)), atol=1e-5)
    assert record["offsets"]["trash"] < 0
    assert la.recorded(model.onnx)["offsets"] == record["offsets"]
    metrics = json.loads(model.metrics.read_text())
    assert metrics["logit_adjustment"] == record
    assert set(record["before"]) == {"plain", "tta"} and set(record["after"]["plain"]) == {"val", "test"}
    # the rewritten test figures are the adjusted file's own predictions
    test = read_manifest(model.manifest, root)["test"]
    pred = OnnxClassifier(model.onnx).classify_bytes([s.path.read_bytes() for s in test])
    accuracy = np.mean([p.label == LABELS[s.label] for p, s in zip(pred, test, strict=True)])
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy)
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == len(test)
    assert metrics["tta"]["kept"] == (metrics["tta"]["val_tta"] > metrics["tta"]["val_plain"])
    assert model.tta_onnx.is_file() == metrics["tta"]["kept"]
    assert model.confusion.is_file()
    with pytest.raises(la.AdjustError, match="already"):
        la.adjust_shipped(model, root)


def test_the_committed_default_model_carries_the_offsets_of_its_training_split() -> None:
    model = ShippedModel()
    record = la.recorded(model.onnx)
    if record is None:
        pytest.skip(f"{model.onnx.name} is not logit-adjusted")
    train = read_manifest(model.manifest, DEFAULT_TRASHNET)["train"]  # labels only: no photos needed
    np.testing.assert_allclose(list(record["offsets"].values()), la.offsets_for(train, len(LABELS)), atol=1e-5)
    metrics = json.loads(model.metrics.read_text())
    assert metrics["logit_adjustment"]["offsets"] == record["offsets"]
    if model.tta_onnx.is_file():
        assert la.recorded(model.tta_onnx)["offsets"] == record["offsets"]


def test_settle_tta_keeps_the_tta_file_only_when_it_wins_on_val(exports: tuple[Path, Path], tmp_path: Path) -> None:
    model = ShippedModel("tiny", tmp_path)
    model.tta_onnx.write_bytes(exports[1].read_bytes())
    model.tta_onnx.with_suffix(".export.json").write_text("{}")
    assert model.settle_tta(0.90, 0.91) and model.tta_onnx.is_file()
    assert not model.settle_tta(0.91, 0.91)  # a tie does not pay for the second pass
    assert not model.tta_onnx.is_file() and not model.tta_onnx.with_suffix(".export.json").is_file()
