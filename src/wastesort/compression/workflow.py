"""Compress one training run (seed 001's recipe) and report it.

Steps: sensitivity scan on validation photos -> per-layer pruning ratios -> magnitude pruning
-> a short fine-tune -> k-means clustering of every conv/linear weight -> centroid fine-tune ->
ONNX exports of dense, pruned and pruned+clustered -> the accuracy gate on the test split
(:mod:`wastesort.variants.gate`, ONNX Runtime, the same serving preprocessing) -> sizes and
interleaved ONNX Runtime timing. Fine-tuning is an ordinary :class:`Trainer` run on the run's
own split and recipe (its command line), with the run's EMA, warm-up and initialisation off.
"""

from __future__ import annotations

import copy
import json
import shlex
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wastesort import evaluation as ev
from wastesort.compression import cluster, prune, size
from wastesort.training.cli import parse_args
from wastesort.training.evaluate import predict
from wastesort.training.export import export_onnx, load_checkpoint
from wastesort.training.trainer import TrainConfig, TrainData, Trainer, load_data
from wastesort.variants import gate as g

#: Variant suffixes (``<net>_<variant>`` in the model repository).
PRUNED, CLUSTERED = "onnx_pruned", "onnx_clustered"


@dataclass(frozen=True)
class Settings:
    """Knobs of one compression run (defaults: ``make compress``)."""

    ratios: tuple[float, ...] = prune.RATIOS
    max_drop: float = 0.01  # a layer's ratio may cost at most this much val top-1 alone
    scan_images: int = 128  # validation photos the scan evaluates on (stratified draw)
    min_weights: int = 20_000  # layers smaller than this stay dense
    clusters: int = 32  # k-means centroids per layer (5-bit indices)
    finetune_epochs: int = 1
    lr: float = 1e-4
    seed: int = 0


@dataclass
class Stage:
    """One model of the table."""

    name: str
    onnx: Path
    val_top1: float
    test_top1: float = 0.0
    bytes: int = 0
    compressed_bytes: int = 0
    img_s: float = 0.0
    passed: bool = True
    reason: str = "reference"
    installed: bool = False


@dataclass
class Result:
    net: str
    run: Path
    settings: Settings
    layers: list[dict] = field(default_factory=list)
    scan: dict[str, dict[float, float]] = field(default_factory=dict)
    scan_baseline: float = 0.0
    scan_photos: int = 0
    stages: list[Stage] = field(default_factory=list)
    test_images: int = 0
    timing_batch: int = 0


def run_config(run: Path, out: Path, s: Settings, data_root: str | None) -> TrainConfig:
    """The run's own training configuration (from its ``command.txt``) turned into a short
    fine-tune writing into ``out``."""
    argv = shlex.split((run / "command.txt").read_text())[2:]
    cfg, _ = parse_args(argv)
    return replace(
        cfg,
        data=data_root or cfg.data,
        out=str(out),
        epochs=s.finetune_epochs,
        lr=s.lr,
        warmup_epochs=0,
        freeze_epochs=0,
        init_from=None,
        ema_decay=0.0,
        patience=0,
        time_limit_min=0.0,
        threads=0,
        seed=s.seed,
    )


def _subset(data: TrainData, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = np.random.default_rng(seed).permutation(len(data.y_val))[:n]
    return data.x_val[idx], data.y_val[idx]


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x).argmax(1) == y.numpy()).mean())


def _finetune(cfg: TrainConfig, data: TrainData, model: nn.Module, out: Path) -> None:
    """Fine-tune ``model`` in place for ``cfg.epochs`` and keep its best-on-val weights."""
    trainer = Trainer(replace(cfg, out=str(out)), data=data, model=model)
    trainer.fit()
    model.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=False)["state_dict"])
    model.to(memory_format=torch.contiguous_format).eval()  # Trainer trains channels-last; pruning needs contiguous weights


def compress(run: Path, work: Path, s: Settings = Settings(), data_root: str | None = None) -> Result:
    """Run every step on ``run`` (its ``best.pt``, split and recipe); files go to ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = run_config(run, work / "data", s, data_root)
    (work / "data").mkdir(exist_ok=True)
    for name in ("manifest.csv", "config.json"):  # load_data(resume=True) reads the run's split from here
        shutil.copyfile(run / name, work / "data" / name)
    data = load_data(cfg, resume=True)
    model, contract, ckpt = load_checkpoint(run / "best.pt")
    net = ckpt["arch"]["name"]
    result = Result(net, run, s)

    xs, ys = _subset(data, s.scan_images, s.seed)
    result.scan_baseline, result.scan_photos = top1(model, xs, ys), len(ys)
    layers = prune.prunable(model, s.min_weights)
    print(f"{net}: scanning {len(layers)} layers x {len(s.ratios)} ratios on {len(ys)} val photos (dense {result.scan_baseline:.4f})")
    result.scan = prune.sensitivity(layers, lambda: top1(model, xs, ys), s.ratios)
    ratios = prune.choose_ratios(result.scan, result.scan_baseline, s.max_drop)

    pruned = copy.deepcopy(model)
    pruned_layers = prune.prunable(pruned, s.min_weights)
    prune.apply(pruned_layers, ratios)
    _finetune(cfg, data, pruned, work / "finetune_pruned")
    prune.finalize(pruned)
    sparsity = prune.sparsity(pruned_layers)

    clustered = copy.deepcopy(pruned)
    all_layers = prune.prunable(clustered, 0)
    cluster.cluster(all_layers, s.clusters, s.seed)
    _finetune(cfg, data, clustered, work / "finetune_clustered")
    cluster.freeze(all_layers)
    distinct = cluster.distinct_values(all_layers)

    for name, layer in layers.items():
        result.layers.append(
            {
                "layer": name,
                "weights": layer.weight.numel(),
                "ratio": ratios[name],
                "sparsity": round(sparsity[name], 4),
                "distinct_values": distinct[name],
            }
        )
    stages = (("dense", model), ("pruned", pruned), ("pruned + clustered", clustered))
    for label, m in stages:
        path = export_onnx(m.eval(), contract, work / f"{label.replace(' + ', '_')}.onnx")
        result.stages.append(Stage(label, path, top1(m, data.x_val, data.y_val)))
    x_test, y_test = data.x_test.numpy(), data.y_test.numpy()
    result.test_images = len(y_test)
    reference = ev.evaluate(result.stages[0].onnx, x_test, y_test, contract.labels)
    timings = g.time_batches([st.onnx for st in result.stages], x_test, batch=32, iters=10)
    result.timing_batch = timings[0].batch
    for st, timing in zip(result.stages, timings, strict=True):
        evaluation = ev.evaluate(st.onnx, x_test, y_test, contract.labels)
        st.test_top1 = evaluation.top1
        st.bytes, st.compressed_bytes = size.sizes(st.onnx)
        st.img_s = timing.img_s
        if st is not result.stages[0]:
            st.passed, st.reason = g.gate(evaluation, reference)
    return result


def save_json(result: Result, path: Path) -> None:
    body = {
        "net": result.net,
        "run": str(result.run),
        "settings": {k: v for k, v in result.settings.__dict__.items()},
        "scan_baseline": result.scan_baseline,
        "scan_photos": result.scan_photos,
        "scan": {k: {str(r): a for r, a in v.items()} for k, v in result.scan.items()},
        "layers": result.layers,
        "stages": [{**st.__dict__, "onnx": str(st.onnx)} for st in result.stages],
        "test_images": result.test_images,
    }
    path.write_text(json.dumps(body, indent=2))
