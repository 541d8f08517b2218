"""Small EfficientNet-Lite0 runs and exports of random weights for tests (no training): the
files a real run or release leaves, with BatchNorms that are not identities."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wastesort.data import scan_image_folder, stratified_split, write_manifest
from wastesort.shipped import DEFAULT_NET
from wastesort.training.cli import parse_args
from wastesort.training.export import export_onnx
from wastesort.training.lite import build_lite
from wastesort.training.logit_adjust import adjust_onnx, offsets_for
from wastesort.training.models import describe
from wastesort.training.trainer import contract_for

#: The recorded training stage of a fake source run.
SOURCE_STAGE = {"epochs": 3, "train_minutes": 1.5, "device": "cpu"}


def unbalanced_copy(root: Path, dest: Path) -> Path:
    """A copy of the ImageFolder ``root`` at ``dest`` with ``metal`` cut to 4 photos and
    ``cardboard`` to 20, so the classes' sizes differ and a release's logit adjustment changes
    answers. Returns ``dest``."""
    shutil.copytree(root, dest)
    for label, keep in (("metal", 4), ("cardboard", 20)):
        for photo in sorted((dest / label).iterdir())[keep:]:
            photo.unlink()
    return dest


def random_lite(seed: int, num_classes: int) -> nn.Module:
    """Lite0 (eval mode) with random weights and BatchNorms that are not identities, as after training."""
    torch.manual_seed(seed)
    model = build_lite(DEFAULT_NET, num_classes=num_classes, drop_rate=0.0, drop_path_rate=0.0).eval()
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_(0.0, 0.1)
            norm.running_mean.normal_(0.0, 0.1), norm.running_var.uniform_(0.5, 1.5)
    return model


def _config(data: Path, out: Path, side: int, *extra: str) -> tuple[object, dict]:
    cfg, _ = parse_args(["--data", str(data), "--out", str(out), "--model", DEFAULT_NET, "--input-size", str(side), *extra])
    return cfg, asdict(cfg)


def lite_export(folder: Path, data: Path, seed: int, side: int = 64, release_offsets: bool = False) -> Path:
    """A Lite0 export of random weights for ``data`` at ``side`` px, logit-adjusted, with the
    split of ``seed`` as its manifest and an export record naming a (fake) source run whose
    ``config.json`` is a full training configuration (class-weighted loss). The adjustment is a
    fixed one unless ``release_offsets``: then the one a release adds for that training split."""
    scan = scan_image_folder(data)
    source = folder / "source_run"
    cfg, config = _config(data, source, side, "--balance", "loss")
    model = random_lite(seed, len(scan.classes))
    path = folder / f"{DEFAULT_NET}.onnx"
    export_onnx(model, contract_for(cfg, scan.classes), path)
    split = stratified_split(scan.samples, cfg.split, seed)
    fixed = np.linspace(-0.5, 0.5, len(scan.classes)).astype(np.float32)
    adjust_onnx(path, offsets_for(split["train"], len(scan.classes)) if release_offsets else fixed)
    write_manifest(path.with_suffix(".manifest.csv"), split, scan.classes, data)
    source.mkdir(parents=True)
    (source / "config.json").write_text(json.dumps({**config, "classes": list(scan.classes), "weights": "imagenet", "init_from": None}))
    path.with_suffix(".export.json").write_text(json.dumps({"source_run": str(source)}))
    path.with_suffix(".metrics.json").write_text(json.dumps({"release": {"lineage": [{"run": str(source), **SOURCE_STAGE}]}}))
    return path


def lite_run(folder: Path, data: Path, seed: int, split_seed: int = 0, side: int = 64, balance: str = "loss") -> Path:
    """A run folder as the trainer leaves it (``best.pt``, ``config.json``, ``manifest.csv``,
    ``metrics.json``, ``command.txt``) holding Lite0 of random weights ``seed``, on the split of
    ``split_seed``."""
    scan = scan_image_folder(data)
    extra = ("--seed", str(seed), "--split-seed", str(split_seed), "--balance", balance)
    cfg, config = _config(data, folder, side, *extra)
    model = random_lite(seed, len(scan.classes))
    folder.mkdir(parents=True)
    contract = contract_for(cfg, scan.classes)
    checkpoint = {
        "arch": describe(DEFAULT_NET, None),
        "num_classes": len(scan.classes),
        "state_dict": model.state_dict(),
        "contract": contract.to_metadata(),
        "epoch": 2,
        "val_acc": 0.5,
    }
    torch.save(checkpoint, folder / "best.pt")
    (folder / "config.json").write_text(json.dumps({**config, "classes": list(scan.classes), "weights": "imagenet"}))
    write_manifest(folder / "manifest.csv", stratified_split(scan.samples, cfg.split, split_seed), scan.classes, data)
    (folder / "metrics.json").write_text(json.dumps({"epochs_run": 2, "train_minutes": 0.5, "device": "cpu"}))
    (folder / "command.txt").write_text(f"python train/train.py --seed {seed} --out {folder}\n")
    return folder
