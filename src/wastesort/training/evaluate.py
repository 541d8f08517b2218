"""Evaluation and the per-run reports: scikit-learn metrics, confusion matrix, curves."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 128, device: str = "cpu") -> np.ndarray:
    """Logits float32 ``(N, C)`` for preprocessed inputs ``x`` ``(N, 3, H, W)``."""
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def write_confusion(matrix: list[list[int]], classes: tuple[str, ...], stem: Path, title: str) -> None:
    """``<stem>.csv`` (rows: true class, columns: predicted) and ``<stem>.png``."""
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true\\pred", *classes])
        for name, row in zip(classes, matrix, strict=True):
            writer.writerow([name, *row])
    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)


def write_predictions(path: Path, paths: list[str], y_true: np.ndarray, logits: np.ndarray, classes: tuple[str, ...]) -> None:
    """Per-image CSV: path, true class, predicted class, its probability, every probability."""
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "true", "pred", "score", *[f"p_{c}" for c in classes]])
        for p, t, row in zip(paths, y_true, prob, strict=True):
            k = int(row.argmax())
            writer.writerow([p, classes[t], classes[k], f"{row[k]:.5f}", *[f"{v:.5f}" for v in row]])


def write_curves(history: list[dict], stem: Path) -> None:
    """``<stem>.csv`` with one row per epoch and ``<stem>.png`` (loss and accuracy)."""
    if not history:
        return
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [h["train_acc"] for h in history], label="train (augmented)")
    b.plot(epochs, [h["val_acc"] for h in history], label="val")
    b.set_xlabel("epoch")
    b.set_ylabel("top-1 accuracy")
    b.legend()
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
