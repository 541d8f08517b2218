"""Attribution maps through Captum, on a PyTorch classifier (or, for an ONNX-only model, any
forward function).

Every map has the input's spatial size and is scaled per image to 0..1 (RGB maps: centred on
0.5). Targets are class indices; the report uses the predicted class (what drove the answer).

Guided backpropagation overrides the gradient of ``nn.ReLU`` modules only (Captum hooks that
type). EfficientNet-Lite uses ReLU6, so :func:`guided_backprop` swaps each ``nn.ReLU6`` for a
:class:`ClampedReLU` (an ``nn.ReLU`` subclass computing the same ``clamp(x, 0, 6)``) for the
duration of the call; SimpleCNN's GELU/SiLU/Mish layers are not ReLUs and keep plain gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam, Occlusion
from torch import nn


class ClampedReLU(nn.ReLU):
    """ReLU6 as an ``nn.ReLU`` subclass, so Captum's guided-backprop hooks apply to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 6.0)


@contextmanager
def relu6_as_relu(model: nn.Module) -> Iterator[int]:
    """Swap every ``nn.ReLU6`` in ``model`` for :class:`ClampedReLU`; yields how many were
    swapped and puts the originals back on exit."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU6:
                swapped.append((parent, name, child))
                setattr(parent, name, ClampedReLU())
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def convs(model: nn.Module) -> list[nn.Conv2d]:
    """The model's ``nn.Conv2d`` modules in registration order (the forward order for every
    network here)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _unit(maps: torch.Tensor) -> np.ndarray:
    """Per-image min-max to 0..1 over all but the first axis."""
    flat = maps.reshape(len(maps), -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape).detach().cpu().numpy()


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM (Captum ``LayerGradCam``) at ``layer`` (default: the last conv layer),
    upsampled bilinearly to the input: float ``(N, H, W)`` in 0..1."""
    model.eval()
    cam = LayerGradCam(model, layer or convs(model)[-1]).attribute(x, target=target, relu_attributions=True)
    up = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return _unit(up[:, 0])


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Guided backpropagation (Captum ``GuidedBackprop``): float ``(N, H, W, 3)``, each image's
    gradient scaled around 0.5 so that its 99.5th percentile magnitude reaches the ends (a
    few extreme pixels would otherwise leave the rest grey)."""
    model.eval()
    with relu6_as_relu(model):
        grads = GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=target)
    g = grads.detach()
    scale = torch.quantile(g.abs().reshape(len(g), -1), 0.995, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (0.5 + 0.5 * (g / scale).clamp(-1, 1)).permute(0, 2, 3, 1).cpu().numpy()


def occlusion(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor, window: int) -> np.ndarray:
    """Occlusion (Captum ``Occlusion``, gradient-free, so it runs on an ONNX Runtime session):
    how much the target's score drops when a ``window`` square is greyed out, float
    ``(N, H, W)`` in 0..1."""
    stride = max(1, window // 2)
    attr = Occlusion(forward).attribute(x, target=target, sliding_window_shapes=(3, window, window), strides=(3, stride, stride))
    return _unit(attr.clamp_min(0).sum(1))


def first_layer_maps(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Output of the first conv layer for ``x``: float ``(N, C, h, w)``."""
    out: list[torch.Tensor] = []
    handle = convs(model)[0].register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        handle.remove()
    return out[0].cpu().numpy()
