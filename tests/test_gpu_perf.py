"""perf/gpu.py and wastesort.perf.gpu: the runners on the CPU (the variants that need no CUDA),
the table, the refusal without a GPU, and the committed GPU results against the models."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from wastesort.paths import REPO_ROOT
from wastesort.perf import gpu
from wastesort.shipped import DEFAULT_NET, FROM_SCRATCH_NET, ShippedModel, sha256
from wastesort.training.models import build_model

SIDE = 64
CPU_VARIANTS = tuple(v for v in gpu.VARIANTS if not v.needs_cuda and v.compile_mode is None)
COMMITTED = REPO_ROOT / "perf" / "results" / "h100-gpu" / "gpu.json"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(FROM_SCRATCH_NET, 6).eval()


def logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIDE, SIDE)).astype(np.float32)


def test_the_variants_cover_what_a_gpu_user_tries() -> None:
    names = {(v.name, v.precision) for v in gpu.VARIANTS}
    assert ("eager", "fp32") in names and ("eager", "fp16") in names
    assert any(v.channels_last for v in gpu.VARIANTS) and any(v.cuda_graph for v in gpu.VARIANTS)
    assert {v.compile_mode for v in gpu.VARIANTS} >= {None, "default", "reduce-overhead"}
    assert all(v.compile_mode is None for v in gpu.QUICK_VARIANTS) and gpu.EAGER_FP32 in gpu.QUICK_VARIANTS
    assert gpu.BATCHES == (1, 8, 64)


@pytest.mark.parametrize("variant", CPU_VARIANTS, ids=lambda v: f"{v.name}-{v.precision}")
def test_runner_reproduces_the_model_and_pads_or_splits_to_its_batch(model: torch.nn.Module, variant: gpu.GpuVariant) -> None:
    x = images(11)
    r = gpu.runner(model, variant, batch=4, side=SIDE, device="cpu", warmup=1)
    out = r.predict(x)  # 4 + 4 + 3 (padded)
    assert out.shape == (11, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out, logits(model, x), atol=1e-4 if variant.precision == "fp32" else 2e-2)
    assert r.predict(x[:1]).shape == (1, 6)
    r.on_device(2)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left untouched


def test_cuda_only_variants_refuse_the_cpu(model: torch.nn.Module) -> None:
    for v in (v for v in gpu.VARIANTS if v.needs_cuda):
        with pytest.raises(ValueError, match="needs CUDA"):
            gpu.runner(model, v, batch=2, side=SIDE, device="cpu")


@pytest.mark.slow
def test_rows_for_times_every_variant_and_batch_and_keeps_failures_as_rows(model: torch.nn.Module) -> None:
    x = images(10, seed=1)
    reference = logits(model, x).argmax(1)
    labels = reference.copy()
    labels[:3] = (labels[:3] + 1) % 6  # 7 of 10 right
    graph = next(v for v in gpu.VARIANTS if v.cuda_graph)
    variants = (*CPU_VARIANTS[:2], graph)
    rows = gpu.rows_for("tiny", model, x, labels, reference, (1, 4), variants, iters=2, progress=lambda _: None, device="cpu")
    timed = [r for r in rows if not r.skipped]
    assert {(r.variant, r.precision, r.batch) for r in timed} == {(v.name, v.precision, b) for v in variants[:2] for b in (1, 4)}
    for r in timed:
        assert r.device_img_s and r.host_img_s and r.device_ms and r.host_ms
        assert r.top1 == pytest.approx(0.7) and r.agreement == pytest.approx(1.0)
    base = [r for r in timed if (r.variant, r.precision) == ("eager", "fp32")]
    assert base and all(r.speedup == 1.0 for r in base)
    failed = [r for r in rows if r.skipped]
    assert len(failed) == 2 and all("needs CUDA" in r.skipped and "\n" not in r.skipped for r in failed)
    text = gpu.table(rows, {"cpu": "Test CPU", "usable_cores": 2, "gpus": []}, ["a note"])
    assert "### tiny" in text and "skipped: ValueError" in text and "- a note" in text
    assert "Fastest for tiny on the GPU: batch 1:" in text and "batch 4:" in text
    assert "64/16 back-to-back calls at batch 1/4" in text


def test_measure_times_both_ways_and_refuses_mixed_batches() -> None:
    calls: list[int] = []
    one = gpu.Runner(gpu.EAGER_FP32, 2, lambda x: x[:, :6, 0, 0], calls.append)
    ((host, device),) = gpu.measure([one], images(2), iters=2)
    assert host.batch == 2 and len(host.samples_ms) == 2
    assert device.batch == 2 * gpu.launches_for(2) and len(device.samples_ms) == 2 and set(calls) == {gpu.launches_for(2)}
    with pytest.raises(ValueError, match="one batch size"):
        gpu.measure([one, gpu.Runner(gpu.EAGER_FP32, 3, lambda x: x, calls.append)], images(2), iters=1)


@pytest.mark.slow
@pytest.mark.skipif(gpu.unavailable_reason() is None, reason="this machine has a GPU: the script would time it")
def test_perf_gpu_without_a_gpu_says_why_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, "perf/gpu.py", "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "GPU rows skipped: no CUDA device visible to torch" in done.stdout and not out.exists()


def test_committed_gpu_results_cover_both_models_and_match_their_accuracy() -> None:
    result = json.loads(COMMITTED.read_text())
    assert result["machine"]["gpus"], "the committed GPU rows must record the GPU"
    rows = result["rows"]
    for net in (DEFAULT_NET, FROM_SCRATCH_NET):
        timed = [r for r in rows if r["net"] == net and not r["skipped"]]
        assert {(r["variant"], r["precision"], r["batch"]) for r in timed} == {
            (v.name, v.precision, b) for v in gpu.VARIANTS for b in gpu.BATCHES
        }
        shipped, measured = ShippedModel(net), result[gpu.MODELS_KEY][net]
        if measured["onnx_sha256"] == sha256(shipped.onnx):
            recorded = shipped.test_top1
        else:  # timed on an earlier release: the table must say which, and the rows match that release
            assert measured["onnx_sha256"][:12] in COMMITTED.with_suffix(".md").read_text(), net
            recorded = measured["test_top1_recorded"]
        n = sum(row["split"] == "test" for row in csv.DictReader(ShippedModel(net).manifest.open()))
        for r in timed:
            assert r["agreement"] >= 0.99 and r["device_img_s"] > 0 and r["host_img_s"] > 0
            assert abs(r["top1"] - recorded) <= 1.5 / n, (net, r["variant"], r["top1"], recorded)  # one photo: the decoder changed since
        skipped = {(r["variant"], r["precision"]) for r in rows if r["net"] == net and r["skipped"]}
        assert {("ONNX Runtime", "fp32"), ("TensorRT", "fp16"), ("TensorRT", "int8")} <= skipped
