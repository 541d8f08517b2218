"""Fine-grained (per-weight) L1-magnitude pruning with ``torch.nn.utils.prune``.

The prunable layers are the ``Conv2d`` and ``Linear`` weights with at least ``min_weights``
elements (smaller ones hold little of the model and are often the most sensitive: depthwise
and first-layer kernels). While pruned, a layer keeps its mask, so fine-tuning leaves pruned
weights at zero; :func:`finalize` makes the zeros permanent.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune

RATIOS = (0.3, 0.5, 0.7, 0.9)


def prunable(model: nn.Module, min_weights: int = 20_000) -> dict[str, nn.Module]:
    """Name -> module of every ``Conv2d``/``Linear`` with at least ``min_weights`` weights."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear) and m.weight.numel() >= min_weights}


def sensitivity(
    layers: dict[str, nn.Module], evaluate: Callable[[], float], ratios: tuple[float, ...] = RATIOS
) -> dict[str, dict[float, float]]:
    """Accuracy (``evaluate()``) after pruning each layer alone at each ratio; every layer is
    restored before the next."""
    scan: dict[str, dict[float, float]] = {}
    for name, module in layers.items():
        original = module.weight.detach().clone()
        scan[name] = {}
        for ratio in ratios:
            prune.l1_unstructured(module, "weight", amount=ratio)
            scan[name][ratio] = evaluate()
            prune.remove(module, "weight")
            with torch.no_grad():
                module.weight.copy_(original)
    return scan


def choose_ratios(scan: dict[str, dict[float, float]], baseline: float, max_drop: float) -> dict[str, float]:
    """Per layer, the largest ratio whose accuracy stays within ``max_drop`` (a fraction, e.g.
    0.01) of ``baseline``; layers that tolerate no ratio are left dense (ratio 0)."""
    return {name: max((r for r, acc in accs.items() if baseline - acc <= max_drop + 1e-9), default=0.0) for name, accs in scan.items()}


def apply(layers: dict[str, nn.Module], ratios: dict[str, float]) -> None:
    """Prune each named layer at its ratio (masks stay in place for fine-tuning)."""
    for name, ratio in ratios.items():
        if ratio > 0:
            prune.l1_unstructured(layers[name], "weight", amount=ratio)


def finalize(model: nn.Module) -> None:
    """Fold every pruning mask into its weight (``prune.remove``)."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def sparsity(layers: dict[str, nn.Module]) -> dict[str, float]:
    """Share of exactly-zero weights per layer."""
    return {n: float((m.weight == 0).float().mean()) for n, m in layers.items()}
