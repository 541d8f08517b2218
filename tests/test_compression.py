"""Pruning reaches its per-layer sparsity, the scan restores every layer, clustering leaves at
most k values per layer with trainable centroids, and a compressed run goes through the gate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import compress as compress_cli  # noqa: E402

import train as train_cli  # noqa: E402
from wastesort import evaluation as ev  # noqa: E402
from wastesort.compression import cluster, prune  # noqa: E402
from wastesort.variants import gate as g  # noqa: E402


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.LazyLinear(6)).eval()


def _ready() -> nn.Module:
    net = _net()
    net(torch.randn(1, 3, 12, 12))  # materialise the lazy layer
    return net


def test_pruning_reaches_the_requested_sparsity_per_layer() -> None:
    net = _ready()
    layers = prune.prunable(net, 0)
    ratios = {"0": 0.3, "2": 0.7, "4": 0.9}
    prune.apply(layers, ratios)
    prune.finalize(net)
    got = prune.sparsity(layers)
    for name, ratio in ratios.items():
        assert got[name] == pytest.approx(ratio, abs=0.01)
    assert not any(prune.prune.is_pruned(m) for m in net.modules())  # masks folded in


def test_sensitivity_scan_restores_each_layer_and_picks_ratios() -> None:
    net = _ready()
    layers = prune.prunable(net, 0)
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    x = torch.randn(4, 3, 12, 12)
    reference = net(x).detach()
    scan = prune.sensitivity(layers, lambda: float((net(x) - reference).abs().mean() < 1e-6), (0.5, 0.9))
    assert all(torch.equal(m.weight, before[n]) for n, m in layers.items())
    assert set(scan) == set(layers) and all(set(v) == {0.5, 0.9} for v in scan.values())
    chosen = prune.choose_ratios({"a": {0.3: 0.90, 0.5: 0.89, 0.7: 0.80}, "b": {0.3: 0.5}}, baseline=0.90, max_drop=0.01)
    assert chosen == {"a": 0.5, "b": 0.0}


@pytest.mark.parametrize("k", [16, 64])
def test_clustering_leaves_at_most_k_values_and_trains_centroids(k: int) -> None:
    net = _ready()
    layers = prune.prunable(net, 0)
    prune.apply(layers, {"2": 0.5})
    prune.finalize(net)
    zeros = layers["2"].weight == 0
    cluster.cluster(layers, k)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    before = layers["2"].parametrizations.weight[0].centroids.detach().clone()
    net(torch.randn(2, 3, 12, 12)).sum().backward()
    opt.step()
    assert not torch.equal(layers["2"].parametrizations.weight[0].centroids, before)
    cluster.freeze(layers)
    assert all(v <= k for v in cluster.distinct_values(layers).values())
    assert bool((layers["2"].weight[zeros] == 0).all())  # pruned weights stay pruned


def test_the_gate_refuses_a_variant_that_loses_too_much() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5] * 10)
    reference = ev.score(labels.copy(), labels, tuple("abcdef"))
    worse = labels.copy()
    worse[:3] = (worse[:3] + 1) % 6  # 5 points lost
    passed, reason = g.gate(ev.score(worse, labels, tuple("abcdef")), reference)
    assert not passed and "below FP32" in reason


@pytest.mark.slow
def test_compressing_a_run_writes_the_table(synthetic_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = ["--model", "simplecnn", "--input-size", "32", "--conv-layers", "3", "--base-features", "16", "--dense-units", "32"]
    assert train_cli.main(["--data", str(synthetic_root), "--out", str(run), "--epochs", "2", *flags]) == 0
    report = tmp_path / "compression.md"
    args = ["--run", str(run), "--work", str(tmp_path / "work"), "--report", str(report), "--min-weights", "1000", "--clusters", "16"]
    assert compress_cli.main([*args, "--repository", str(tmp_path / "repo")]) == 0
    body = json.loads(report.with_suffix(".json").read_text())
    assert [s["name"] for s in body["stages"]] == ["dense", "pruned", "pruned + clustered"]
    dense = body["stages"][0]
    for stage in body["stages"][1:]:
        assert stage["passed"] == ((dense["test_top1"] - stage["test_top1"]) * 100 <= g.DEFAULT_MAX_DROP_POINTS)
        assert not stage["installed"]  # not the committed model's run
        assert stage["compressed_bytes"] < dense["compressed_bytes"] or not any(r["ratio"] for r in body["layers"])
    assert all(r["distinct_values"] <= 16 for r in body["layers"])
    assert "| pruned + clustered |" in report.read_text()
    assert not (tmp_path / "repo").exists()
