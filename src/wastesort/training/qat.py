"""Quantisation-aware fine-tuning (QAT) of an exported EfficientNet-Lite for ONNX Runtime INT8.

Once the INT8 settings keep the sensitive early layers in float, what post-training INT8 still
loses against FP32 is rounding (``experiments/int8_settings/``). QAT fine-tunes a copy
of the FP32 weights under simulated 8-bit rounding, so that the integer model ``quantize_static``
makes from them stays closer to the FP32 model. The recipe, by self-distillation (no labels):

* **The student is the export itself** (:func:`student_from_onnx`): timm's architecture with the
  ONNX file's weights, whose BatchNorms the exporter folded into the convolutions. Each
  BatchNorm is left as an identity that only adds the folded bias, and stays frozen. The
  weights being fake-quantised are then exactly the weights ONNX Runtime quantises.
* **Fake quantisation where ONNX Runtime puts integers** (:func:`attach_fake_quant`): every
  Conv and the classifier's Gemm after the layers the INT8 settings keep in float
  (``float_prefix_convs``). Weights per output channel, symmetric, 8 bits in [-127, 127]
  (ONNX Runtime's symmetric INT8 range). Each such layer's input per tensor, unsigned 8 bits,
  with a moving-average min/max range (torch's ``FakeQuantize``). Gradients pass straight through.
* **Loss**: mean squared error between the student's logits and the FP32 model's (ONNX Runtime)
  on the training split, each image or its mirror. The activation ranges are calibrated
  first, on the INT8 calibration images, and frozen for the second half of the steps.
* **Result**: ordinary FP32 weights (:func:`detach_fake_quant`), exported like any model and
  quantised by the same ``quantize_int8`` with the same calibration; the FP32 model served
  and the accuracy gate's reference stay the committed export.

The simulation leaves out what ONNX Runtime does besides rounding: percentile calibration,
quantised residual sums, and the 16-bit saturation of AVX2's U8S8 kernels. The sweep
(``experiments/int8_settings/int8_sweep.py``) measures the real INT8 model, and chooses with it.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.utils.parametrize as parametrize
from onnx import numpy_helper
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
from torch.utils.hooks import RemovableHandle
from tqdm import tqdm

from wastesort.contract import PreprocessContract
from wastesort.evaluation import split_tensors
from wastesort.machine import describe, one_line
from wastesort.shipped import ShippedModel, sha256
from wastesort.training.calibrate import carry_calibration, network_logits
from wastesort.training.export import export_onnx, verify_export
from wastesort.training.lite import LITE_NETS, build_lite
from wastesort.variants.calibration import calibration_tensor, select_calibration
from wastesort.variants.ort import int8_settings

#: ONNX Runtime's symmetric INT8 weight range is [-WEIGHT_QMAX, WEIGHT_QMAX].
WEIGHT_QMAX = 127
#: Prefix of every weight name in an export (``WithProbabilities`` wraps the network as ``model``).
EXPORT_PREFIX = "model."
#: Suffix the exporter gives the bias it folds out of a BatchNorm into the convolution before it.
FOLDED_BIAS_SUFFIX = ".weight_bias"


@dataclass(frozen=True)
class QatConfig:
    """Fine-tuning schedule: AdamW at ``lr`` with cosine decay over ``epochs`` passes of the
    training split in batches of ``batch_size``; activation ranges frozen after half the steps."""

    epochs: float = 1.0
    lr: float = 1e-5
    batch_size: int = 32
    seed: int = 0


def student_from_onnx(path: str | Path, net: str) -> nn.Module:
    """The exported Lite network ``path`` as a PyTorch module in eval mode, reproducing its logits.

    Raises:
        ValueError: ``net`` is not an EfficientNet-Lite, or the file lacks a weight or folded bias
            the network needs (an export from another network or exporter).
    """
    if net not in LITE_NETS:
        raise ValueError(f"QAT rebuilds EfficientNet-Lite exports ({', '.join(LITE_NETS)}), not {net!r}")
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    classifier_bias = weights.get(f"{EXPORT_PREFIX}classifier.bias")
    if classifier_bias is None:
        raise ValueError(f"{path} has no {EXPORT_PREFIX}classifier.bias: not an export of {net}")
    model = build_lite(net, num_classes=len(classifier_bias), drop_rate=0.0, drop_path_rate=0.0)
    pairs = _conv_norm_pairs(model)

    def tensor(key: str, shape: torch.Size) -> torch.Tensor:
        if key not in weights:
            raise ValueError(f"{path} has no initialiser {key!r}")
        value = torch.from_numpy(weights[key].copy())
        if value.numel() != shape.numel():
            raise ValueError(f"{key} has {value.numel()} values, {net} needs {tuple(shape)}")
        return value.reshape(shape)

    with torch.no_grad():
        for name, conv, norm in pairs:
            conv.weight.copy_(tensor(f"{EXPORT_PREFIX}{name}.weight", conv.weight.shape))
            _as_identity(norm, tensor(f"{EXPORT_PREFIX}{name}{FOLDED_BIAS_SUFFIX}", norm.bias.shape))
        model.classifier.weight.copy_(tensor(f"{EXPORT_PREFIX}classifier.weight", model.classifier.weight.shape))
        model.classifier.bias.copy_(tensor(f"{EXPORT_PREFIX}classifier.bias", model.classifier.bias.shape))
    return model.eval()


def _conv_norm_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """Each convolution (its name, module order) with the BatchNorm after it, as EfficientNet-Lite
    pairs them. Raises ``ValueError`` when the network does not have one BatchNorm per convolution."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if len(layers) != len(norms):
        raise ValueError(f"{len(layers)} convolutions but {len(norms)} BatchNorms; expected one after each")
    return [(name, conv, norm) for (name, conv), norm in zip(layers, norms, strict=True)]


def _as_identity(norm: nn.BatchNorm2d, bias: torch.Tensor) -> None:
    """Make ``norm`` the folded form's identity that adds ``bias``: its scale lives in the
    convolution's weight, so its own weight is 1 and frozen, mean 0 and variance ``1 - eps``
    (``(x - 0) / sqrt(1 - eps + eps) == x``). Call under ``torch.no_grad()``."""
    norm.weight.fill_(1.0)
    norm.weight.requires_grad_(False)
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0 - norm.eps)
    norm.bias.copy_(bias)


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of the Lite network ``model`` in the form :func:`student_from_onnx` returns: each
    BatchNorm's eval-mode scale folded into the convolution before it, and the BatchNorm an
    identity adding the folded bias (frozen weight), so the tensors are those an export computes
    with. In eval mode the copy computes what ``model`` does (to float rounding).

    Raises:
        ValueError: the network does not pair each convolution with one BatchNorm.
    """
    folded = copy.deepcopy(model).eval()
    pairs = _conv_norm_pairs(folded)
    if any(conv.bias is not None for _, conv, _ in pairs):
        raise ValueError("a convolution with its own bias: expected bias-free convolutions, each before its BatchNorm")
    with torch.no_grad():
        for _, conv, norm in pairs:
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            _as_identity(norm, norm.bias - norm.running_mean * scale)
    return folded


class SymmetricPerChannel(nn.Module):
    """Weight parametrisation: each output channel rounded to ``2 * WEIGHT_QMAX + 1`` levels
    symmetric around zero, scale ``max |w| / WEIGHT_QMAX`` (straight-through gradient)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = (weight.detach().abs().flatten(1).amax(1) / WEIGHT_QMAX).clamp_min(1e-12).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX)


def _input_quantizer() -> FakeQuantize:
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        averaging_constant=0.01,
    )


@dataclass
class FakeQuant:
    """What :func:`attach_fake_quant` added: the layers' names, their input quantisers, the hooks."""

    layers: list[str]
    inputs: list[FakeQuantize] = field(repr=False)
    hooks: list[RemovableHandle] = field(repr=False)

    def observing(self, on: bool) -> None:
        """Update the activation ranges from what passes (``on``) or keep them frozen."""
        for quantizer in self.inputs:
            quantizer.enable_observer(on)

    def rounding(self, on: bool) -> None:
        """Round the activations (``on``) or let them pass unchanged."""
        for quantizer in self.inputs:
            quantizer.enable_fake_quant(on)


def _quantize_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (module.input_fake_quant(args[0]), *args[1:])


def attach_fake_quant(model: nn.Module, float_prefix_convs: int) -> FakeQuant:
    """Fake-quantise every Conv2d/Linear of ``model`` after its first ``float_prefix_convs``
    convolutions (those the INT8 settings keep in float): weights per channel, inputs per tensor.
    The input quantisers start observing and not rounding; see :func:`calibrate`."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)][float_prefix_convs:]
    fake = FakeQuant([], [], [])
    for name, layer in layers:
        parametrize.register_parametrization(layer, "weight", SymmetricPerChannel())
        layer.add_module("input_fake_quant", _input_quantizer())
        fake.layers.append(name)
        fake.inputs.append(layer.input_fake_quant)
        fake.hooks.append(layer.register_forward_pre_hook(_quantize_input))
    fake.rounding(False)
    return fake


def detach_fake_quant(model: nn.Module, fake: FakeQuant) -> nn.Module:
    """Remove what :func:`attach_fake_quant` added, keeping the trained float weights (not their
    rounded copies: ONNX Runtime rounds them when it quantises). Returns ``model``."""
    for hook in fake.hooks:
        hook.remove()
    modules = dict(model.named_modules())
    for name in fake.layers:
        layer = modules[name]
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        del layer.input_fake_quant
    return model


def logits(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """float32 ``(N, C)`` logits of ``model`` (eval mode, no gradient) on ``(N, 3, H, W)`` images."""
    model.eval()
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(images[i : i + batch_size])).numpy() for i in range(0, len(images), batch_size)])


def calibrate(model: nn.Module, fake: FakeQuant, images: np.ndarray) -> None:
    """Set the input ranges from ``images`` (the INT8 calibration images), then start rounding."""
    fake.rounding(False)
    fake.observing(True)
    logits(model, images)
    fake.rounding(True)


def distill(
    model: nn.Module,
    fake: FakeQuant,
    images: np.ndarray,
    teacher: np.ndarray,
    teacher_mirrored: np.ndarray,
    config: QatConfig = QatConfig(),
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Fine-tune ``model`` (fake-quantised, calibrated) towards the FP32 ``teacher`` logits of
    ``images`` (float32 ``(N, 3, H, W)``) and ``teacher_mirrored`` (of the horizontally mirrored
    images); each step sees every image of its batch or its mirror. BatchNorms stay frozen
    (the model stays in eval mode; Lite has no other train-time behaviour once dropout is 0).
    Returns the loss of every step."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    steps = max(1, int(config.epochs * len(images) / config.batch_size))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.eval()
    fake.observing(True)
    losses: list[float] = []
    batches = _batches(len(images), config.batch_size, rng)
    for step in tqdm(range(steps), desc="QAT", leave=False, disable=None):
        if step == steps // 2:
            fake.observing(False)
        index = next(batches)
        mirror = rng.random(len(index)) < 0.5
        x = images[index]
        x[mirror] = x[mirror][..., ::-1]
        target = np.where(mirror[:, None], teacher_mirrored[index], teacher[index])
        loss = nn.functional.mse_loss(model(torch.from_numpy(x)), torch.from_numpy(target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    fake.observing(False)
    return losses


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless shuffled batches of indices into ``n`` images (whole batches only, reshuffled each epoch)."""
    batch_size = min(batch_size, n)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def fine_tune(model: ShippedModel, data: Path, config: QatConfig = QatConfig(), calibration_images: int = 300) -> dict:
    """``make qat``: fine-tune ``model``'s export for its INT8 settings and write
    :attr:`~wastesort.shipped.ShippedModel.qat_onnx` (verified against PyTorch) and its record
    :attr:`~wastesort.shipped.ShippedModel.qat_record`, which it returns.

    Reads the training split (fine-tuning, and the INT8 calibration images) and the validation
    split (the simulated INT8 logit error against FP32, before and after) of the model's manifest
    under ``data``, all through the serving preprocessing."""
    start = time.perf_counter()
    settings = int8_settings(model.net)
    contract = PreprocessContract.from_onnx(str(model.onnx))
    train = model.split("train", data)
    train_x, _ = split_tensors(train, contract)
    val_x, _ = split_tensors(model.split("val", data), contract)
    calibration = calibration_tensor(select_calibration(train, calibration_images), contract)
    # the teacher is the export's network: its typicality tail is put back on the copy afterwards
    teacher_train = network_logits(model.onnx, train_x)
    teacher_mirrored = network_logits(model.onnx, np.ascontiguousarray(train_x[..., ::-1]))
    teacher_val = network_logits(model.onnx, val_x)

    student = student_from_onnx(model.onnx, model.net)
    rebuilt = float(np.abs(logits(student, val_x[:64]) - teacher_val[:64]).max())
    if rebuilt > 1e-3:
        raise ValueError(f"the PyTorch rebuild of {model.onnx.name} differs from it by {rebuilt:.2e} in the logits")
    fake = attach_fake_quant(student, settings.float_prefix_convs)
    calibrate(student, fake, calibration)
    before = float(((logits(student, val_x) - teacher_val) ** 2).mean())
    losses = distill(student, fake, train_x, teacher_train, teacher_mirrored, config)
    after = float(((logits(student, val_x) - teacher_val) ** 2).mean())
    detach_fake_quant(student, fake)
    export_onnx(student, contract, model.qat_onnx, doc=f"{model.onnx.name} fine-tuned for INT8 (make qat): not for FP32 serving")
    verified = verify_export(model.qat_onnx, student, val_x)
    carry_calibration(model.onnx, model.qat_onnx)
    record = {
        "source": model.onnx.name,
        "source_sha256": sha256(model.onnx),
        "net": model.net,
        "config": asdict(config),
        "steps": len(losses),
        "train_images": len(train_x),
        "calibration_images": len(calibration),
        "fake_quantised_layers": len(fake.layers),
        "float_prefix_convs": settings.float_prefix_convs,
        "simulated_int8_val_logit_mse": {"before": round(before, 5), "after": round(after, 5)},
        "first_last_loss": [round(losses[0], 5), round(losses[-1], 5)],
        "export_check": verified,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": one_line(describe()),
    }
    model.qat_record.write_text(json.dumps(record, indent=2) + "\n")
    return record
