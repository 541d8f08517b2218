"""k-means weight clustering (scikit-learn ``KMeans``) with trainable centroids.

Each clustered layer's weight becomes ``centroids[index] * mask`` through a
``torch.nn.utils.parametrize`` parametrisation: the indices are fixed, the centroids are
``nn.Parameter``s, so fine-tuning updates each centroid with the summed gradient of its
weights (Deep Compression's rule). Pruned zeros stay zero and count as one of the ``k``
values: a pruned layer gets ``k - 1`` centroids for its surviving weights, a dense one ``k``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn
from torch.nn.utils import parametrize


class Clustered(nn.Module):
    """Parametrisation: weight = ``centroids[index]`` where ``mask``, else 0."""

    def __init__(self, weight: torch.Tensor, k: int, seed: int = 0) -> None:
        super().__init__()
        w = weight.detach()
        mask = w != 0
        alive = w[mask].reshape(-1, 1).cpu().numpy().astype(np.float64)
        n = max(1, min((k - 1) if (~mask).any() else k, len(np.unique(alive))))
        km = KMeans(n_clusters=n, n_init=1, init="k-means++", random_state=seed).fit(alive)
        index = torch.zeros(w.shape, dtype=torch.long)
        index[mask.cpu()] = torch.from_numpy(km.labels_.astype(np.int64))
        self.centroids = nn.Parameter(torch.tensor(km.cluster_centers_[:, 0], dtype=w.dtype))
        self.register_buffer("index", index)
        self.register_buffer("mask", mask.to(w.dtype))

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return self.centroids[self.index] * self.mask


def cluster(layers: dict[str, nn.Module], k: int, seed: int = 0) -> None:
    """Replace each layer's weight by its k-means parametrisation; the original weight stops
    training (only the centroids do)."""
    if not 2 <= k <= 256:
        raise ValueError(f"k must be 2..256 (at most 8-bit indices), not {k}")
    for module in layers.values():
        parametrize.register_parametrization(module, "weight", Clustered(module.weight, k, seed), unsafe=True)
        module.parametrizations.weight.original.requires_grad_(False)


def freeze(layers: dict[str, nn.Module]) -> None:
    """Bake the centroids into plain weights (for export)."""
    for module in layers.values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def distinct_values(layers: dict[str, nn.Module]) -> dict[str, int]:
    return {n: int(torch.unique(m.weight.detach()).numel()) for n, m in layers.items()}
