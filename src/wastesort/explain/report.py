"""One explainability report for one model: ``README.md`` plus its PNGs.

A model comes as a training checkpoint (``best.pt``: every figure) or as an ONNX file alone.
Without the checkpoint there are no gradients: the report then has the prediction grid, the
first-layer filters (read from the graph's first Conv weights) and Captum's gradient-free
Occlusion maps on the ONNX Runtime session, and says that Grad-CAM, guided backpropagation and
feature maps need the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from wastesort.contract import PreprocessContract
from wastesort.data import Sample
from wastesort.evaluation import split_tensors
from wastesort.explain import attribution, figures
from wastesort.inference import OnnxClassifier
from wastesort.paths import shown as shown_path
from wastesort.shipped import LOGITS
from wastesort.training.evaluate import predict
from wastesort.training.export import load_checkpoint

GRID, FILTERS, FEATURES = "grid.png", "first_layer_filters.png", "feature_maps.png"
CORRECT, WRONG = "attributions_correct.png", "attributions_wrong.png"


@dataclass
class Subject:
    """The model under study: its name, contract, source file and either a PyTorch module
    (from a checkpoint) or an ONNX Runtime classifier."""

    name: str
    contract: PreprocessContract
    source: Path
    model: nn.Module | None = None
    onnx_model: OnnxClassifier | None = None

    @classmethod
    def from_checkpoint(cls, path: Path) -> Subject:
        model, contract, ckpt = load_checkpoint(path)
        return cls(ckpt["arch"]["name"], contract, Path(path), model=model)

    @classmethod
    def from_onnx(cls, path: Path) -> Subject:
        clf = OnnxClassifier(path)
        return cls(Path(path).stem, clf.contract, Path(path), onnx_model=clf)

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.model is not None:
            return predict(self.model, torch.from_numpy(x))
        return self.onnx_model.batched(LOGITS, x)

    def first_filters(self) -> np.ndarray:
        if self.model is not None:
            return attribution.convs(self.model)[0].weight.detach().numpy()
        graph = onnx.load(str(self.source)).graph
        weights = {i.name: i for i in graph.initializer}
        first = next(n for n in graph.node if n.op_type == "Conv")
        return numpy_helper.to_array(weights[first.input[1]])


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def pick_examples(true: np.ndarray, probs: np.ndarray, n_classes: int) -> tuple[list[int], list[int]]:
    """Per true class, the most confident correct photo and the most confident wrong one
    (classes with no mistake have no wrong example)."""
    pred, conf = probs.argmax(1), probs.max(1)
    right, wrong = [], []
    for c in range(n_classes):
        for chosen, ok in ((right, True), (wrong, False)):
            idx = np.flatnonzero((true == c) & ((pred == true) == ok))
            if len(idx):
                chosen.append(int(idx[np.argmax(conf[idx])]))
    return right, wrong


def _attributions(subject: Subject, x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)
    if subject.model is not None:
        cam = attribution.grad_cam(subject.model, xt, tt)
        gbp = attribution.guided_backprop(subject.model, xt, tt)
        guided = np.abs(gbp - 0.5).max(-1) * cam
        return {"Grad-CAM": cam, "guided backprop": gbp, "guided Grad-CAM": guided / max(float(guided.max()), 1e-12)}

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(subject.onnx_model.batched(LOGITS, batch.numpy()))

    return {"occlusion": attribution.occlusion(forward, xt, tt, window=max(8, subject.contract.width // 8))}


def write_report(subject: Subject, samples: list[Sample], out: Path, split: str = "test", seed: int = 0) -> Path:
    """Predict every photo of ``samples`` through the served preprocessing, draw the figures
    into ``out`` and write ``out/README.md``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    classes = subject.contract.labels
    x, true = split_tensors(samples, subject.contract, f"{split} photos")
    probs = _softmax(subject.logits(x))
    pred = probs.argmax(1)
    acc = float((pred == true).mean())
    shown = figures.to_display(x, subject.contract)
    rng = np.random.default_rng(seed)
    grid_idx = np.sort(rng.choice(len(samples), size=min(30, len(samples)), replace=False))
    cells = figures.prediction_grid(shown[grid_idx], true[grid_idx], probs[grid_idx], classes, out / GRID)
    weight = subject.first_filters()
    figures.filter_grid(
        weight, out / FILTERS, f"{subject.name}: first layer, {weight.shape[0]} filters {weight.shape[2]}x{weight.shape[3]}"
    )
    right, wrong = pick_examples(true, probs, len(classes))
    written = {GRID, FILTERS}
    for name, idx in ((CORRECT, right), (WRONG, wrong)):
        if not idx:
            continue
        maps = _attributions(subject, x[idx], pred[idx])
        titles = [
            f"{s.path.name}\ntrue {classes[true[i]]}, pred {classes[pred[i]]} {probs[i, pred[i]]:.2f}"
            for i, s in ((i, samples[i]) for i in idx)
        ]
        colours = [figures.RIGHT if pred[i] == true[i] else figures.WRONG for i in idx]
        figures.attribution_rows(shown[idx], maps, titles, colours, out / name, overlay={"Grad-CAM", "occlusion"})
        written.add(name)
    if subject.model is not None:
        few = right[:3]
        maps = attribution.first_layer_maps(subject.model, torch.from_numpy(x[few]))
        figures.feature_maps(shown[few], maps, [classes[true[i]] for i in few], out / FEATURES)
        written.add(FEATURES)
    readme = out / "README.md"
    readme.write_text(_markdown(subject, split, len(samples), acc, sum(c.colour == figures.WRONG for c in cells), written, len(wrong)))
    return readme


def _markdown(subject: Subject, split: str, n: int, acc: float, grid_wrong: int, written: set[str], n_wrong: int) -> str:
    c = subject.contract
    kind = "training checkpoint (PyTorch)" if subject.model is not None else "ONNX file only (no gradients)"
    lines = [
        f"# What `{subject.name}` looks at",
        "",
        f"Model: `{shown_path(subject.source)}` ({kind}); input {c.width}x{c.height}, resize `{c.resize}`. Photos: the model's own "
        f"{split} split, {n} photos it never trained on, through the served preprocessing; top-1 here {acc:.4f}.",
        "Generated by `make explain` (`train/explain.py`); attributions by Captum.",
        "",
        "## Sample predictions",
        "",
        f"30 {split} photos drawn at random (seed 0): true label, predicted label and its probability; green when right, "
        f"red when wrong ({grid_wrong} wrong here).",
        "",
        f"![grid]({GRID})",
        "",
        "## First layer",
        "",
        f"![filters]({FILTERS})",
        "",
    ]
    if FEATURES in written:
        lines += [
            "Feature maps of the first conv layer (before its normalisation and activation) for three photos:",
            "",
            f"![feature maps]({FEATURES})",
            "",
        ]
    else:
        lines += [
            "Feature maps, Grad-CAM and guided backpropagation need the training checkpoint (gradients, hooks); this report",
            "was made from the ONNX file alone.",
            "",
        ]
    method = (
        "Grad-CAM at the last conv layer (overlay), guided backpropagation (EfficientNet-Lite's ReLU6 treated as a ReLU for the "
        "guided rule) and their product, guided Grad-CAM, for the predicted class"
        if subject.model is not None
        else "Occlusion (grey squares slid over the photo, the drop of the predicted class's score)"
    )
    lines += ["## Attributions", "", f"{method}. Per class, the most confident correct photo:", "", f"![correct]({CORRECT})", ""]
    if WRONG in written:
        lines += [f"and the most confident mistake of each class that has one ({n_wrong} classes):", "", f"![wrong]({WRONG})", ""]
    return "\n".join(lines)
