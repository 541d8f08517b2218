"""The explainability figures (matplotlib, PNG). Photos are shown as the model saw them: the
served preprocessing's output with the contract's normalisation undone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wastesort.contract import PreprocessContract  # noqa: E402

RIGHT, WRONG = "green", "red"


def to_display(x: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """Model inputs float32 ``(N, 3, H, W)`` -> displayable ``(N, H, W, 3)`` in 0..1."""
    mean = np.asarray(contract.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(contract.std, np.float32).reshape(1, 3, 1, 1)
    return np.clip(x * std + mean, 0.0, 1.0).transpose(0, 2, 3, 1)


@dataclass(frozen=True)
class Cell:
    """One titled cell of the prediction grid."""

    title: str
    colour: str


def prediction_grid(
    images: np.ndarray, true: np.ndarray, probs: np.ndarray, classes: tuple[str, ...], path: Path, rows: int = 3, cols: int = 10
) -> list[Cell]:
    """The seed's sample-prediction grid: ``rows x cols`` photos titled with the true label,
    the predicted label and its probability, green when right and red when wrong. Returns the
    cells drawn."""
    pred = probs.argmax(1)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.5 * rows))
    cells = []
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= len(images):
            continue
        ok = pred[i] == true[i]
        cell = Cell(f"true: {classes[true[i]]}\npred: {classes[pred[i]]} ({probs[i, pred[i]]:.2f})", RIGHT if ok else WRONG)
        ax.imshow(images[i])
        ax.set_title(cell.title, color=cell.colour, fontsize=9)
        cells.append(cell)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return cells


def filter_grid(weight: np.ndarray, path: Path, title: str) -> None:
    """First-layer filters ``(C_out, 3, k, k)`` as RGB tiles, each scaled to 0..1."""
    n = len(weight)
    cols = min(16, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.5))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i < n:
            w = weight[i].transpose(1, 2, 0)
            ax.imshow((w - w.min()) / max(float(w.max() - w.min()), 1e-12), interpolation="nearest")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def feature_maps(images: np.ndarray, maps: np.ndarray, titles: list[str], path: Path, channels: int = 11) -> None:
    """Per photo (row): the photo, then its first ``channels`` first-layer feature maps."""
    channels = min(channels, maps.shape[1])
    rows, cols = len(images), channels + 1
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.4), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_title(titles[r], fontsize=8)
        for c in range(channels):
            axes[r, c + 1].imshow(maps[r, c], cmap="viridis")
            if r == 0:
                axes[r, c + 1].set_title(f"ch {c}", fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def attribution_rows(
    images: np.ndarray, columns: dict[str, np.ndarray], titles: list[str], colours: list[str], path: Path, overlay: set[str]
) -> None:
    """One row per photo: the photo (titled), then each named map; maps named in ``overlay``
    are drawn as a heat map over the photo."""
    rows, cols = len(images), 1 + len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.5), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_title(titles[r], color=colours[r], fontsize=8)
        for c, (name, maps) in enumerate(columns.items(), start=1):
            if name in overlay:
                axes[r, c].imshow(images[r])
                axes[r, c].imshow(maps[r], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            else:
                axes[r, c].imshow(maps[r], cmap=None if maps[r].ndim == 3 else "gray")
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
