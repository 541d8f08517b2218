"""Architectures: output shapes, parameter counts, pretrained-weight loading, fine-tune groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from wastesort.training.models import (
    SEED_SIMPLECNN_PARAMS,
    SimpleCNN,
    SimpleCNNConfig,
    build_model,
    count_parameters,
    head_of,
    parameter_groups,
)

# Trainable parameters with a 6-class head (torchvision's ImageNet models minus their 1000-class head).
EXPECTED_PARAMS = {"mobilenet_v3_small": 1_524_006, "resnet18": 11_179_590, "efficientnet_b0": 4_015_234}


def test_simplecnn_preset_matches_the_seed_parameter_count() -> None:
    model = SimpleCNN(SimpleCNNConfig())
    assert count_parameters(model) == SEED_SIMPLECNN_PARAMS == 547_334
    assert model(torch.zeros(2, 3, 128, 128)).shape == (2, 6)


@pytest.mark.parametrize(
    ("cfg", "params"),
    [
        (
            SimpleCNNConfig(
                conv_layers=3,
                base_features=8,
                strategy="doubling",
                kernel_size=3,
                input_size=64,
                conv_activation="gelu",
                dense_activation="silu",
                dense_units=32,
            ),
            None,
        ),
        (SimpleCNNConfig(conv_layers=4, base_features=32, strategy="halving", batch_norm=False, input_size=64), None),
    ],
)
def test_simplecnn_options(cfg: SimpleCNNConfig, params: int | None) -> None:
    model = SimpleCNN(cfg, num_classes=6)
    assert model(torch.zeros(3, 3, cfg.input_size, cfg.input_size)).shape == (3, 6)
    widths = [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert widths == [cfg.features(i) for i in range(cfg.conv_layers)]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.features) == cfg.batch_norm


def test_simplecnn_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="activation"):
        SimpleCNN(SimpleCNNConfig(conv_activation="tanh"))
    with pytest.raises(ValueError, match="too small"):
        SimpleCNN(SimpleCNNConfig(conv_layers=8, input_size=64))


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_torchvision_models_shape_and_params(name: str) -> None:
    model = build_model(name, 6).eval()
    assert count_parameters(model) == EXPECTED_PARAMS[name]
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 6)


def test_weights_file_loads_an_imagenet_state_dict(tmp_path: Path) -> None:
    """The offline path: a 1000-class torchvision state_dict, head replaced afterwards."""
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", 6, weights_file=tmp_path / "resnet18.pth")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 6
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_model("resnet18", 6, weights_file=tmp_path / "bad.pth")


def test_imagenet_weights_go_through_the_torchvision_enum(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_get_model(name, weights=None):
        seen["weights"] = weights
        return torchvision.models.mobilenet_v3_small(weights=None)

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    build_model("mobilenet_v3_small", 6, weights="imagenet")
    assert seen["weights"] == torchvision.models.MobileNet_V3_Small_Weights.DEFAULT


def test_freeze_backbone_and_backbone_lr_factor() -> None:
    model = build_model("mobilenet_v3_small", 6)
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.05, freeze_backbone=True)
    head = {id(p) for p in head_of(model).parameters()}
    assert {id(p) for g in groups for p in g["params"]} == head
    assert count_parameters(model) == 1024 * 6 + 6
    model = build_model("resnet18", 6)
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_factor=0.1)
    lrs = {g["lr"] for g in groups}
    assert lrs == {1e-3, 1e-4}
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim <= 1 for p in g["params"]))
    with pytest.raises(ValueError):
        build_model("simplecnn", 6, weights="imagenet")
