"""Explainability: Captum maps of the image's size that are not constant, ReLU6 networks under
the guided-backprop rule, the 30-cell prediction grid, and whole reports from a checkpoint and
from an ONNX file alone."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop, Saliency
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import explain as explain_cli  # noqa: E402

import train as train_cli  # noqa: E402
from wastesort.explain import attribution, figures  # noqa: E402
from wastesort.explain.report import CORRECT, FEATURES, FILTERS, GRID  # noqa: E402
from wastesort.training.export import export_onnx, load_checkpoint  # noqa: E402
from wastesort.training.lite import build_lite  # noqa: E402
from wastesort.training.models import SimpleCNN, SimpleCNNConfig  # noqa: E402

SIDE = 64


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    simple = SimpleCNN(SimpleCNNConfig(conv_layers=3, base_features=8, dense_units=16, input_size=SIDE, conv_activation="relu"))
    return {"simplecnn": simple.eval(), "lite": build_lite("efficientnet_lite0", 6, pretrained=False).eval()}


@pytest.mark.parametrize("name", ["simplecnn", "lite"])
def test_maps_have_the_image_size_and_are_not_constant(name: str) -> None:
    model = _nets()[name]
    x = torch.randn(2, 3, SIDE, SIDE)
    target = torch.tensor([1, 4])
    cam = attribution.grad_cam(model, x, target)
    gbp = attribution.guided_backprop(model, x, target)
    assert cam.shape == (2, SIDE, SIDE) and gbp.shape == (2, SIDE, SIDE, 3)
    for maps in (cam, gbp):
        assert all(np.ptp(m) > 0.1 for m in maps)
        assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_relu6_follows_the_guided_rule_and_is_restored() -> None:
    model = _nets()["lite"]
    before = [type(m) for m in model.modules()]
    x = torch.randn(1, 3, SIDE, SIDE, requires_grad=True)
    with attribution.relu6_as_relu(model) as swapped:
        assert swapped > 10
        guided = GuidedBackprop(model).attribute(x, target=2)
    plain = Saliency(model).attribute(x, target=2, abs=False)
    assert [type(m) for m in model.modules()] == before
    assert not torch.allclose(guided, plain)  # the hooks changed the gradient: the ReLU6s were seen


def test_occlusion_runs_on_any_forward_function() -> None:
    model = _nets()["simplecnn"]
    maps = attribution.occlusion(lambda b: model(b).detach(), torch.randn(1, 3, SIDE, SIDE), torch.tensor([0]), window=16)
    assert maps.shape == (1, SIDE, SIDE) and np.ptp(maps) > 0


def test_grid_has_30_cells_coloured_by_correctness(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((30, 8, 8, 3))
    true = rng.integers(0, 6, 30)
    probs = rng.dirichlet(np.ones(6), 30)
    cells = figures.prediction_grid(images, true, probs, tuple("abcdef"), tmp_path / "g.png")
    assert len(cells) == 30 and (tmp_path / "g.png").stat().st_size > 0
    pred = probs.argmax(1)
    assert [c.colour for c in cells] == [figures.RIGHT if p == t else figures.WRONG for p, t in zip(pred, true, strict=True)]
    assert all(c.title.startswith("true: ") and "\npred: " in c.title for c in cells)


@pytest.fixture(scope="module")
def tiny_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("explain_run")
    flags = ["--model", "simplecnn", "--input-size", "32", "--conv-layers", "3", "--base-features", "8", "--dense-units", "32"]
    assert train_cli.main(["--data", str(synthetic_root), "--out", str(out), "--epochs", "2", *flags, "--conv-activation", "relu"]) == 0
    return out


def test_report_from_a_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    assert explain_cli.main(["--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path)]) == 0
    for name in (GRID, FILTERS, FEATURES, CORRECT, "README.md"):
        assert (tmp_path / name).is_file(), name
    readme = (tmp_path / "README.md").read_text()
    assert "Grad-CAM" in readme and "training checkpoint" in readme


def test_report_from_onnx_alone(tiny_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    model, contract, _ = load_checkpoint(tiny_run / "best.pt")
    onnx_path = export_onnx(model, contract, tmp_path / "tiny.onnx")
    args = ["--onnx", str(onnx_path), "--manifest", str(tiny_run / "manifest.csv"), "--data", str(synthetic_root)]
    args += ["--out", str(tmp_path / "rep")]
    assert explain_cli.main(args) == 0
    readme = (tmp_path / "rep" / "README.md").read_text()
    assert "ONNX file only" in readme and "Occlusion" in readme
    assert not (tmp_path / "rep" / FEATURES).exists()


def test_missing_photos_are_a_clear_error(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert explain_cli.main(["--checkpoint", str(tiny_run / "best.pt"), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
