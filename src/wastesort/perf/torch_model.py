"""The PyTorch eager baseline of an exported model, rebuilt from the ONNX file's own weights.

Only the ONNX model is committed; the training checkpoint stays in ``runs/``. So the PyTorch
row of the benchmark rebuilds the torchvision (or timm EfficientNet-Lite) architecture and loads the exported weights into
it. The exporter folded each BatchNorm into the convolution before it (the conv weight is
``<conv>.weight``, the folded shift ``<conv>.weight_bias``). The rebuilt model keeps every
BatchNorm module so that eager PyTorch does the same work as an unfused model: each is set to
the identity scale (mean 0, variance ``1 - eps``, weight 1) with the folded shift as its bias.
:func:`torch_from_onnx` checks the logits against ONNX Runtime before anyone times it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from wastesort.shipped import LOGITS
from wastesort.training.models import LITE_MODELS, TORCHVISION_MODELS, build_model

#: The exporter wraps the classifier as ``WithProbabilities.model``: every weight name starts so.
PREFIX = "model."


class RebuildError(ValueError):
    """The ONNX weights do not fit the named torchvision architecture."""


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(conv name, conv, the BatchNorm that follows it) for every Conv-BN pair, in order."""
    pairs = []
    modules = list(model.named_modules())
    for (name, conv), (_, bn) in zip(modules, modules[1:], strict=False):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            pairs.append((name, conv, bn))
    return pairs


def torch_from_onnx(onnx_path: str | Path, net: str, num_classes: int) -> nn.Module:
    """A torchvision ``net`` in eval mode carrying the weights of ``onnx_path``.

    Raises:
        RebuildError: an ONNX weight is missing, left over or of another shape.
    """
    if net not in TORCHVISION_MODELS + LITE_MODELS:
        raise RebuildError(f"{net} is not a torchvision or timm Lite model ({TORCHVISION_MODELS + LITE_MODELS})")
    weights = {i.name.removeprefix(PREFIX): numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    model = build_model(net, num_classes).eval()
    state = model.state_dict()
    used: set[str] = set()

    def take(key: str, shape: torch.Size) -> torch.Tensor:
        if key not in weights:
            raise RebuildError(f"{onnx_path} has no weight {PREFIX}{key} for {net}")
        value = torch.from_numpy(np.array(weights[key], dtype=weights[key].dtype, copy=True))
        if value.shape != shape:
            raise RebuildError(f"{PREFIX}{key} is {tuple(value.shape)} in {onnx_path}, {tuple(shape)} in {net}")
        used.add(key)
        return value

    folded = {name for name, _, _ in _conv_bn_pairs(model)}
    with torch.no_grad():
        for name, conv, bn in _conv_bn_pairs(model):
            conv.weight.copy_(take(f"{name}.weight", conv.weight.shape))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(take(f"{name}.weight_bias", bn.bias.shape))
        for key, value in state.items():
            module = key.rsplit(".", 1)[0]
            if module in folded or isinstance(model.get_submodule(module), nn.BatchNorm2d):
                continue
            value.copy_(take(key, value.shape))
    left = sorted(k for k, v in weights.items() if k not in used and v.ndim > 0 and "." in k)
    if left:
        raise RebuildError(f"{onnx_path} has weights {net} does not use: {left[:5]}")
    return model


def check_against_onnx(model: nn.Module, onnx_path: str | Path, images: np.ndarray, atol: float = 1e-3) -> float:
    """Largest absolute logit difference between ``model`` and ONNX Runtime on float32
    ``(N, 3, H, W)`` ``images`` (the file's typicality factor taken back out: the rebuilt
    network has the file's weights, not its typicality tail); raises :class:`RebuildError` above
    ``atol``."""
    from wastesort.inference import OnnxClassifier
    from wastesort.training.calibrate import typicality_factor

    reference = OnnxClassifier(onnx_path).run([LOGITS], images)[0] * typicality_factor(onnx_path, images)
    with torch.inference_mode():
        logits = model(torch.from_numpy(images)).numpy()
    diff = float(np.abs(logits - reference).max())
    if diff > atol:
        raise RebuildError(f"rebuilt PyTorch model differs from {onnx_path} by {diff:.2e} in the logits (limit {atol:.0e})")
    return diff
