"""An exported EfficientNet-Lite made trainable again: continue fine-tuning from a committed ONNX file.

Training runs are not committed, so a released model's ``best.pt`` may be gone while its ONNX
export is in ``models/``. :func:`trainable_from_onnx` turns the export back into timm's network
with ordinary, trainable BatchNorms, so ``train/train.py --init-from models/<net>.onnx`` can
continue from it:

* the weights come from :func:`~wastesort.training.qat.student_from_onnx`: each convolution with
  its BatchNorm folded in, each BatchNorm an identity adding the folded bias ``b``;
* each BatchNorm is then re-expanded around the statistics of its input on training photos
  (mean ``mu``, variance ``var`` per channel, measured in one pass in eval mode):
  ``running_mean = mu``, ``running_var = var``, ``weight = sqrt(var + eps)``, ``bias = b + mu``.
  In eval mode that is the same function (``(x - mu) / sqrt(var + eps) * sqrt(var + eps) + b + mu
  = x + b``), and in train mode a batch's own statistics are close to ``mu`` and ``var``, so the
  first steps do not jolt the network;
* a logit adjustment recorded in the file (``make release`` adds class-frequency offsets to the
  head's bias) is subtracted, so training resumes from the network the loss was trained on.

Contract: the returned module, in eval mode, reproduces the file's logits before the adjustment
(tested to 1e-4); it maps float32 ``(N, 3, H, W)`` normalised as the file's contract says.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from wastesort.confidence import read as read_confidence
from wastesort.data import Sample
from wastesort.training.logit_adjust import recorded_offsets
from wastesort.training.qat import student_from_onnx

#: Training photos whose BatchNorm input statistics re-expand a folded network.
BN_STATISTICS_IMAGES = 256


def statistics_sample(train: list[Sample], count: int = BN_STATISTICS_IMAGES) -> list[Sample]:
    """``count`` training photos, evenly spaced over the split; by default the
    :data:`BN_STATISTICS_IMAGES` whose statistics re-expand a folded network's BatchNorms."""
    return train[:: max(1, len(train) // count)][:count]


def _input_statistics(model: nn.Module, images: torch.Tensor, batch_size: int) -> list[tuple[nn.BatchNorm2d, torch.Tensor, torch.Tensor]]:
    """Each BatchNorm (module order) with the mean and variance of its input per channel over
    ``images`` (float64; ``model`` runs in eval mode, so the statistics are those of the network
    as it is)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    positions = [0] * len(norms)
    sums = [torch.zeros(m.num_features, dtype=torch.float64) for m in norms]
    squares = [torch.zeros(m.num_features, dtype=torch.float64) for m in norms]

    def hook(index: int):
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().double()
            sums[index] += x.sum(dim=(0, 2, 3))
            squares[index] += (x * x).sum(dim=(0, 2, 3))
            positions[index] += x.shape[0] * x.shape[2] * x.shape[3]

        return record

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(norms)]
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model.eval()(images[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
    stats = []
    for norm, s, q, n in zip(norms, sums, squares, positions, strict=True):
        mean = s / n
        stats.append((norm, mean, (q / n - mean * mean).clamp_min(0.0)))
    return stats


def reexpand_batchnorms(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """Re-expand, in place, each identity BatchNorm of a folded network (the form of
    :func:`~wastesort.training.qat.student_from_onnx`) around the statistics of its input on
    ``images`` (float32, normalised as the network's contract says; training photos), as the
    module docstring says: the same function in eval mode, ordinary trainable BatchNorms.
    Returns ``model`` in eval mode."""
    stats = _input_statistics(model, images, batch_size)
    with torch.no_grad():
        for norm, mean, var in stats:
            norm.running_mean.copy_(mean.float())
            norm.running_var.copy_(var.float())
            norm.weight.copy_(torch.sqrt(var + norm.eps).float())
            norm.bias.add_(mean.float())
            norm.weight.requires_grad_(True)
    return model.eval()


def trainable_from_onnx(path: str | Path, net: str, images: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """The export ``path`` of Lite network ``net`` as a trainable timm module (eval mode), its
    BatchNorms re-expanded around their input statistics on ``images`` (float32, normalised as
    the file's contract says; training photos) and any recorded logit adjustment removed.

    Raises:
        ValueError: not an export of ``net`` (see :func:`student_from_onnx`), or the recorded
            adjustment does not name the file's classes (``AdjustError``, a ``ValueError``).
    """
    return reexpand_batchnorms(unadjusted_student(path, net), images, batch_size)


def unadjusted_student(path: str | Path, net: str) -> nn.Module:
    """:func:`~wastesort.training.qat.student_from_onnx` of ``path`` with any recorded
    calibration undone (the head multiplied back by its temperature) and any recorded logit
    adjustment subtracted from the head's bias: the folded network as it was trained."""
    model = student_from_onnx(path, net)
    confidence = read_confidence(path)
    offsets = recorded_offsets(Path(path))
    with torch.no_grad():
        if confidence is not None:
            model.classifier.weight.mul_(confidence.temperature)
            model.classifier.bias.mul_(confidence.temperature)
        if offsets is not None:
            model.classifier.bias.sub_(torch.from_numpy(offsets))
    return model
