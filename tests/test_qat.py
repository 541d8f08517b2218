"""Quantisation-aware fine-tuning: the PyTorch rebuild of the committed export, where fake
quantisation goes and what it rounds to, that training moves what it should and nothing else,
and ``make qat`` end to end on synthetic photos (its file is what ``make build`` quantises)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from wastesort.data import scan_image_folder, stratified_split, write_manifest
from wastesort.inference import OnnxClassifier
from wastesort.shipped import DEFAULT_NET, FROM_SCRATCH_NET, LOGITS, ShippedModel
from wastesort.training.calibrate import typicality_factor
from wastesort.training.qat import (
    WEIGHT_QMAX,
    QatConfig,
    attach_fake_quant,
    calibrate,
    detach_fake_quant,
    distill,
    fine_tune,
    logits,
    student_from_onnx,
)
from wastesort.variants import int8_graph
from wastesort.variants.ort import EFFICIENTNET_LITE0_INT8, Int8Settings, int8_source

COMMITTED = ShippedModel(DEFAULT_NET)
PREFIX = EFFICIENTNET_LITE0_INT8.float_prefix_convs


@pytest.fixture(scope="module")
def student() -> nn.Module:
    return student_from_onnx(COMMITTED.onnx, DEFAULT_NET)


def _images(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.6, (n, 3, side, side)).astype(np.float32)


def test_the_rebuild_reproduces_the_committed_export(student: nn.Module) -> None:
    x = _images(4, 224)
    reference = OnnxClassifier(COMMITTED.onnx).batched(LOGITS, x) * typicality_factor(COMMITTED.onnx, x)
    assert np.abs(logits(student, x) - reference).max() < 1e-4
    norms = [m for m in student.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)


def test_other_networks_and_files_are_refused() -> None:
    with pytest.raises(ValueError, match="EfficientNet-Lite"):
        student_from_onnx(COMMITTED.onnx, FROM_SCRATCH_NET)
    with pytest.raises(ValueError, match="classifier.bias|initialiser"):
        student_from_onnx(ShippedModel(FROM_SCRATCH_NET).onnx, DEFAULT_NET)


def test_fake_quant_rounds_the_layers_onnx_runtime_quantises() -> None:
    model = student_from_onnx(COMMITTED.onnx, DEFAULT_NET)
    float_out = logits(model, _images(4, 96))
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    fake = attach_fake_quant(model, PREFIX)
    weighted = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear) and name in fake.layers]
    assert fake.layers == weighted and fake.layers[0] == convs[PREFIX] and fake.layers[-1] == "classifier"
    assert len(fake.layers) == len(convs) + 1 - PREFIX
    modules = dict(model.named_modules())
    for name in convs[:PREFIX]:  # the float prefix is left alone
        assert not hasattr(modules[name], "parametrizations") and not hasattr(modules[name], "input_fake_quant")
    layer = modules[fake.layers[0]]
    rounded, raw = layer.weight.detach(), layer.parametrizations.weight.original.detach()
    scale = raw.abs().flatten(1).amax(1) / WEIGHT_QMAX
    steps = rounded.flatten(1) / scale[:, None]
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= WEIGHT_QMAX + 1e-3
    assert 0 < (rounded - raw).abs().max() <= scale.max() / 2 + 1e-7
    calibrate(model, fake, _images(8, 96, seed=1))
    ranges = [(float(q.activation_post_process.min_val), float(q.activation_post_process.max_val)) for q in fake.inputs]
    assert all(np.isfinite(lo) and lo <= 0.0 <= hi and hi > lo for lo, hi in ranges)
    quantized_out = logits(model, _images(4, 96))
    assert 0 < np.abs(quantized_out - float_out).max() < 0.25 * np.abs(float_out).max()


def test_distillation_moves_the_weights_towards_the_teacher_and_detaches_cleanly() -> None:
    model = student_from_onnx(COMMITTED.onnx, DEFAULT_NET)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images(8, 64, seed=2)
    teacher = logits(model, x)
    teacher[:, 0] += 2.0  # a target the float model misses: the loss must come down
    fake = attach_fake_quant(model, PREFIX)
    calibrate(model, fake, x)
    losses = distill(model, fake, x, teacher, teacher, QatConfig(epochs=4, lr=1e-3, batch_size=4))
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2])
    assert not any(q.observer_enabled[0] for q in fake.inputs)  # ranges frozen at the end
    detach_fake_quant(model, fake)
    assert not any(hasattr(m, "parametrizations") or hasattr(m, "input_fake_quant") for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")) or re.search(r"(^|\.)bn\d\.weight$", key):
            assert torch.equal(after[key], value), f"{key} changed: BatchNorm must stay frozen for the fold to hold"
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert not torch.equal(after["blocks.6.0.conv_pwl.weight"], before["blocks.6.0.conv_pwl.weight"])


@pytest.mark.slow
def test_make_qat_end_to_end_writes_what_make_build_quantises(tmp_path: Path, small_root: Path) -> None:
    scan = scan_image_folder(small_root)
    model = ShippedModel(DEFAULT_NET, tmp_path / "models")
    model.folder.mkdir()
    shutil.copy(COMMITTED.onnx, model.onnx)
    write_manifest(model.manifest, stratified_split(scan.samples, seed=0), scan.classes, small_root)
    settings = Int8Settings(float_prefix_convs=PREFIX, qat_weights=True)
    assert int8_source(model, settings)[0] == model.onnx  # nothing fine-tuned yet: the FP32 export, said so
    assert "NOT the QAT weights" in int8_source(model, settings)[1]

    record = fine_tune(model, small_root, QatConfig(epochs=1, batch_size=8), calibration_images=8)

    assert model.qat_problem() is None and json.loads(model.qat_record.read_text()) == record
    assert record["steps"] == record["train_images"] // 8 and record["export_check"]["top1_agreement"] == 1.0
    assert int8_source(model, settings) == (model.qat_onnx, f"from the QAT weights {model.qat_onnx.name}")
    assert int8_source(model, Int8Settings(float_prefix_convs=PREFIX))[0] == model.onnx
    names = [int8_graph.weighted_modules(onnx.load(str(p))) for p in (model.onnx, model.qat_onnx)]
    assert names[0] == names[1]  # float_prefix_convs and float_modules name the same layers in both
    model.onnx.write_bytes(model.onnx.read_bytes() + b"\0")  # another export: the copy is stale
    assert "another export" in (model.qat_problem() or "")
    assert int8_source(model, settings)[0] == model.onnx
