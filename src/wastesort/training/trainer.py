"""Train one classifier on an ImageFolder dataset and write a complete run folder.

Run folder (``runs/<name>/``): ``config.json``, ``manifest.csv`` (the split), ``best.pt``,
``last.pt`` (for ``--resume``), ``curves.csv/png``, ``metrics.json`` (val and test),
``confusion_{val,test}.csv/png``, ``predictions_{val,test}.csv``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from wastesort import evaluation as ev
from wastesort.contract import PreprocessContract
from wastesort.data import (
    Sample,
    read_manifest,
    report_skipped,
    same_split,
    scan_image_folder,
    split_seed_of,
    stratified_split,
    write_manifest,
)
from wastesort.data import class_weights as inverse_frequency
from wastesort.training import evaluate, pipeline
from wastesort.training.export import DECODERS, INIT_EXPORT_KEY, export_origin, export_splits, is_export, with_decoder
from wastesort.training.models import (
    DEFAULT_INPUT_SIZE,
    SimpleCNNConfig,
    build_model,
    count_parameters,
    describe,
    head_of,
    normalisation,
    parameter_groups,
)


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as ``config.json``."""

    data: str
    out: str
    model: str = "simplecnn"
    simplecnn: SimpleCNNConfig = field(default_factory=SimpleCNNConfig)
    input_size: int | None = None
    resize: str = "squash"
    weights: str | None = None
    weights_file: str | None = None
    bn_momentum: float | None = None  # override BatchNorm momentum (torchvision's MobileNet/EfficientNet use 0.01)
    init_from: str | None = None  # best.pt of an earlier run (same classes): continue from its weights
    head_dropout: float | None = None  # Lite models: dropout before the head (None: timm's default)
    strategy: str = "finetune_all"  # or freeze_backbone
    freeze_epochs: int = 0  # two-stage fine-tuning: this many head-only epochs (frozen backbone and BN statistics) first
    backbone_lr_factor: float = 1.0
    epochs: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    mix_prob: float = 0.5
    augment: bool = True  # False: resize and normalise only (no crops, flips, colour, MixUp/CutMix)
    min_scale: float = 0.35
    rotation: float = 20.0
    background: float = 0.0  # probability of replacing the white board with a random background
    scene: float = 0.0  # of those replacements, the share composed as a scene (item smaller on a floor, shadow, light)
    blur: float = 0.0  # probability of a Gaussian blur
    jpeg: float = 0.0  # probability of a JPEG re-compression
    grad_clip: float = 2.0
    ema_decay: float = 0.0
    balance: str = "none"  # none | loss | sampler
    patience: int = 20
    seed: int = 0
    split_seed: int | None = None  # the split's seed (None: ``seed``), so that a seed study keeps one split
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    train_fraction: float = 1.0  # train on this stratified share of the training split (sweep budgets); val/test stay whole
    device: str = "auto"
    amp: bool = True  # fp16 autocast on CUDA; on CPU only when cpu_bf16 is set
    cpu_bf16: bool = False
    threads: int = 0
    time_limit_min: float = 0.0

    def data_seed(self) -> int:
        """The seed that draws the split (and the ``train_fraction`` subset)."""
        return split_seed_of(vars(self))

    def input_side(self) -> int:
        if self.input_size:
            return self.input_size
        return self.simplecnn.input_size if self.model == "simplecnn" else DEFAULT_INPUT_SIZE[self.model]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(warmup_steps: int, total_steps: int, floor: float = 0.01):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def head_only(cfg: TrainConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` (0-based) trains the head alone on a frozen backbone."""
    return cfg.strategy == "freeze_backbone" or epoch < cfg.freeze_epochs


def stage_starts(cfg: TrainConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` begins a new stage (the whole network after the head stage)."""
    return epoch > 0 and head_only(cfg, epoch - 1) != head_only(cfg, epoch)


def stage_optimizer(model: nn.Module, cfg: TrainConfig, epoch: int) -> torch.optim.AdamW:
    """The AdamW of the stage that ``epoch`` belongs to.

    Head stage: only the head's parameters require gradients and only they are in the
    optimiser. Full stage: every parameter trains, the head at ``lr`` and the backbone at
    ``lr * backbone_lr_factor``.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    groups = parameter_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_factor, freeze_backbone=head_only(cfg, epoch))
    return torch.optim.AdamW(groups, lr=cfg.lr)


def ema_avg_fn(decay: float):
    """Exponential moving average whose decay warms up as ``min(decay, (1 + n) / (10 + n))``
    after ``n`` updates, so the average tracks the model early on instead of its random
    initialisation (the schedule timm uses)."""

    def fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)

    return fn


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=smoothing)


@dataclass
class TrainData:
    """The split of one dataset and its tensors under one preprocessing contract: training
    cache (uint8), validation and test tensors exactly as served (float32)."""

    classes: tuple[str, ...]
    splits: dict[str, list[Sample]]
    contract: PreprocessContract
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def contract_for(cfg: TrainConfig, classes: tuple[str, ...]) -> PreprocessContract:
    """The preprocessing contract a run of ``cfg`` trains and is served with."""
    side = cfg.input_side()
    mean, std = normalisation(cfg.model)
    return PreprocessContract(height=side, width=side, resize=cfg.resize, mean=mean, std=std, labels=classes)


def stratified_subset(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """``fraction`` of each class (at least one image per class), chosen reproducibly by ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], not {fraction}")
    rng = random.Random(seed)
    keep: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        members = [s for s in samples if s.label == label]
        keep += rng.sample(members, max(1, round(fraction * len(members))))
    return sorted(keep, key=lambda s: str(s.path))


def load_data(cfg: TrainConfig, resume: bool = False) -> TrainData:
    """Scan ``cfg.data``, split it (or, on resume, read ``cfg.out/manifest.csv``) and load the
    tensors for ``cfg``'s contract."""
    root = Path(cfg.data)
    manifest = Path(cfg.out) / "manifest.csv"
    if resume and manifest.exists():
        splits = read_manifest(manifest, root)
        classes = tuple(json.loads((Path(cfg.out) / "config.json").read_text())["classes"])
    else:
        scan = scan_image_folder(root)
        report_skipped(scan.skipped)
        classes = scan.classes
        seed = cfg.data_seed()
        splits = stratified_split(scan.samples, cfg.split, seed)
        if cfg.train_fraction < 1.0:  # the manifest records the subset, so a resume reads it back as it is
            splits = {**splits, "train": stratified_subset(splits["train"], cfg.train_fraction, seed)}
    contract = contract_for(cfg, classes)
    x_train, y_train = pipeline.train_cache(splits["train"], contract)
    x_val, y_val = pipeline.eval_tensor(splits["val"], contract, "val images")
    x_test, y_test = pipeline.eval_tensor(splits["test"], contract, "test images")
    return TrainData(classes, splits, contract, x_train, y_train, x_val, y_val, x_test, y_test)


class Trainer:
    """Holds the data, model, optimiser and history of one run; :meth:`fit` then :meth:`report`."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, data: TrainData | None = None, model: nn.Module | None = None) -> None:
        """``data``: the split and tensors prepared by :func:`load_data` for this configuration's
        contract, shared by several runs (the sweep's trials); ``None`` loads them here.
        ``model``: train this module (e.g. a pruned or clustered copy of a trained ``cfg.model``)
        instead of building one."""
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        seed_everything(cfg.seed)
        side = cfg.input_side()
        if cfg.model == "simplecnn" and side != cfg.simplecnn.input_size:
            cfg.simplecnn = SimpleCNNConfig(**{**asdict(cfg.simplecnn), "input_size": side})
        self.data = data if data is not None else load_data(cfg, resume)
        if data is not None and data.contract != contract_for(cfg, data.classes):
            raise ValueError(f"the shared data was prepared for {data.contract}, this run needs {contract_for(cfg, data.classes)}")
        self.classes, self.splits, self.contract = self.data.classes, self.data.splits, self.data.contract
        manifest = self.out / "manifest.csv"
        if not (resume and manifest.exists()):
            write_manifest(manifest, self.splits, self.classes, Path(cfg.data))
        counts = {c: [sum(s.label == i for s in self.splits[k]) for k in ("train", "val", "test")] for i, c in enumerate(self.classes)}
        print("class counts (train/val/test): " + ", ".join(f"{c} {a}/{b}/{t}" for c, (a, b, t) in counts.items()))
        from_export = bool(cfg.init_from) and model is None and is_export(cfg.init_from)
        origin = {INIT_EXPORT_KEY: export_origin(cfg.init_from)} if from_export else {}
        (self.out / "config.json").write_text(json.dumps({**asdict(cfg), "classes": list(self.classes), **origin}, indent=2))
        self.x_train, self.y_train = self.data.x_train, self.data.y_train
        self.x_val, self.y_val = self.data.x_val, self.data.y_val
        self.x_test, self.y_test = self.data.x_test, self.data.y_test

        n_cls = len(self.classes)
        if model is not None:
            self.model = model.to(self.device)
        else:
            self.model = build_model(cfg.model, n_cls, cfg.weights, cfg.weights_file, cfg.simplecnn, cfg.head_dropout).to(self.device)
        if cfg.bn_momentum is not None and model is None:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = cfg.bn_momentum
        if from_export:
            self._init_from_export(Path(cfg.init_from))
        elif cfg.init_from and model is None:
            ckpt = torch.load(cfg.init_from, map_location=self.device, weights_only=False)
            if ckpt["arch"]["name"] != cfg.model or ckpt["num_classes"] != n_cls:
                raise ValueError(f"--init-from {cfg.init_from} is a {ckpt['arch']['name']} with {ckpt['num_classes']} classes")
            self.model.load_state_dict(ckpt["state_dict"])
            print(f"initialised from {cfg.init_from} (epoch {ckpt['epoch']}, val {ckpt['val_acc']:.4f})")
        self.model = self.model.to(memory_format=torch.channels_last)
        self.batch_size = min(cfg.batch_size, len(self.y_train))
        self.epoch = 0
        self._start_stage()
        self.ema = AveragedModel(self.model, avg_fn=ema_avg_fn(cfg.ema_decay), use_buffers=True) if cfg.ema_decay > 0 else None
        weights = torch.from_numpy(inverse_frequency(self.splits["train"], n_cls))
        self.loss_weight = weights.to(self.device) if cfg.balance == "loss" else None
        self.sample_weights = weights[self.y_train] if cfg.balance == "sampler" else None
        self.transform = pipeline.train_transform(
            self.contract,
            cfg.min_scale,
            cfg.rotation,
            background=cfg.background,
            scene=cfg.scene,
            blur=cfg.blur,
            jpeg=cfg.jpeg,
            seed=cfg.seed,
            augment=cfg.augment,
        )
        self.mixer = pipeline.batch_mixer(n_cls, cfg.mixup_alpha, cfg.cutmix_alpha) if cfg.augment else None
        self.use_cuda_amp = cfg.amp and self.device == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_cuda_amp)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.best_acc, self.best_epoch, self.history = 0, -1.0, 0, []
        self.train_seconds = 0.0
        if resume and (self.out / "last.pt").exists():
            self._load_last()
        print(f"model {cfg.model}: {count_parameters(self.model):,} trainable parameters, input {side}x{side}, device {self.device}")

    def _init_from_export(self, path: Path) -> None:
        """Start from the exported network ``path`` (:func:`trainable_from_onnx`), which must have
        been trained on this run's split (its ``.manifest.csv``) and take this run's input."""
        if not same_split(export_splits(path, Path(self.cfg.data)), self.splits):
            here = f"{self.cfg.data}, split seed {self.cfg.data_seed()}"
            raise ValueError(f"--init-from {path} was trained on another split than this run's ({here})")
        served = PreprocessContract.from_onnx(str(path))
        if with_decoder(served, DECODERS[-1]) != with_decoder(self.contract, DECODERS[-1]):  # all but the decoder
            raise ValueError(f"--init-from {path} takes {served}, this run {self.contract}")
        from wastesort.training.rebuild import statistics_sample, trainable_from_onnx  # QAT's ONNX reader: onnx, quantisation tools

        sample = statistics_sample(self.splits["train"])
        x, _ = pipeline.eval_tensor(sample, self.contract, "BatchNorm statistics images")

        rebuilt = trainable_from_onnx(path, self.cfg.model, x)
        self.model.load_state_dict(rebuilt.state_dict())
        print(f"initialised from the export {path} (BatchNorms re-expanded on {len(sample)} training photos)")

    def _start_stage(self) -> None:
        """Optimiser and schedule of the stage ``self.epoch`` is in. The head stage runs at a
        constant rate; the full stage warms up, then follows a cosine to the run's end."""
        cfg = self.cfg
        self.optimizer = stage_optimizer(self.model, cfg, self.epoch)
        steps_per_epoch = max(1, len(self.y_train) // self.batch_size)
        if head_only(cfg, self.epoch) and cfg.strategy != "freeze_backbone":
            schedule = lambda step: 1.0  # noqa: E731
        else:
            first = 0 if cfg.strategy == "freeze_backbone" else cfg.freeze_epochs
            schedule = _lr_lambda(cfg.warmup_epochs * steps_per_epoch, (cfg.epochs - first) * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    # ----- checkpoints -------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _save_best(self) -> None:
        torch.save(
            {
                "arch": describe(self.cfg.model, self.cfg.simplecnn if self.cfg.model == "simplecnn" else None),
                "num_classes": len(self.classes),
                "state_dict": self.eval_model().state_dict(),
                "contract": self.contract.to_metadata(),
                "epoch": self.epoch,
                "val_acc": self.best_acc,
            },
            self.out / "best.pt",
        )

    def _save_last(self) -> None:
        torch.save(
            {
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": self.epoch,
                "best_acc": self.best_acc,
                "best_epoch": self.best_epoch,
                "history": self.history,
                "train_seconds": self.train_seconds,
                "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            },
            self.out / "last.pt",
        )

    def _load_last(self) -> None:
        ckpt = torch.load(self.out / "last.pt", map_location=self.device, weights_only=False)
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.epoch, self.best_acc, self.best_epoch = ckpt["epoch"], ckpt["best_acc"], ckpt["best_epoch"]
        self._start_stage()  # the saved optimiser belongs to the stage of the last epoch run
        if not stage_starts(self.cfg, self.epoch):  # at the boundary train_epoch starts the new stage fresh
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.history, self.train_seconds = ckpt["history"], ckpt["train_seconds"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.generator.set_state(ckpt["rng"]["generator"])
        print(f"resumed from {self.out / 'last.pt'} after epoch {self.epoch} (best val {self.best_acc:.4f})")

    # ----- training ----------------------------------------------------------------------------
    def _autocast(self):
        if self.use_cuda_amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.cpu_bf16 and self.device == "cpu")

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training cache; returns (mean loss, top-1 on the augmented batches).
        In the head stage the backbone runs in eval mode: its BatchNorm statistics stay the
        pretrained ones instead of drifting towards a frozen network's batches."""
        if stage_starts(self.cfg, self.epoch):
            self._start_stage()
            print(f"stage 2: whole network, backbone lr x{self.cfg.backbone_lr_factor}", flush=True)
        if head_only(self.cfg, self.epoch):
            self.model.eval()
            head_of(self.model).train()
        else:
            self.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        n_batches = len(self.y_train) // self.batch_size
        batches = pipeline.train_batches(self.x_train, self.y_train, self.batch_size, self.transform, self.generator, self.sample_weights)
        bar = tqdm(batches, total=n_batches, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", leave=False, disable=None)
        for x, y in bar:
            target = F.one_hot(y, len(self.classes)).float()
            if self.mixer is not None and torch.rand(1).item() < self.cfg.mix_prob:
                x, target = self.mixer(x, y)
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            target = target.to(self.device)
            with self._autocast():
                logits = self.model(x)
            loss = _loss(logits, target, self.loss_weight, self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1).cpu() == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        return total_loss / max(seen, 1), correct / max(seen, 1)

    def validate(self) -> tuple[float, float]:
        logits = torch.from_numpy(evaluate.predict(self.eval_model(), self.x_val, device=self.device))
        loss = F.cross_entropy(logits, self.y_val).item()
        return loss, (logits.argmax(1) == self.y_val).float().mean().item()

    def fit(self, on_epoch: Callable[[int, float], None] | None = None) -> None:
        """Train until ``cfg.epochs``, early stopping or the time limit. ``on_epoch(epoch,
        val_acc)`` is called after every epoch (1-based) once its checkpoints are saved; an
        exception it raises (e.g. a sweep pruning the trial) ends the run there."""
        cfg = self.cfg
        stale = self.epoch - self.best_epoch
        while self.epoch < cfg.epochs:
            start = time.perf_counter()
            train_loss, train_acc = self.train_epoch()
            val_loss, val_acc = self.validate()
            self.epoch += 1
            self.train_seconds += time.perf_counter() - start
            lr = self.optimizer.param_groups[0]["lr"]
            self.history.append(
                {
                    "epoch": self.epoch,
                    "train_loss": round(train_loss, 5),
                    "train_acc": round(train_acc, 5),
                    "val_loss": round(val_loss, 5),
                    "val_acc": round(val_acc, 5),
                    "lr": lr,
                    "seconds": round(self.train_seconds, 1),
                }
            )
            improved = val_acc > self.best_acc
            if improved:
                self.best_acc, self.best_epoch, stale = val_acc, self.epoch, 0
                self._save_best()
            else:
                stale += 1
            self._save_last()
            print(
                f"epoch {self.epoch:3d}/{cfg.epochs} loss {train_loss:.3f} acc {train_acc:.3f} | val loss {val_loss:.3f} "
                f"acc {val_acc:.4f}{' *' if improved else ''} | lr {lr:.2e} | {self.train_seconds / 60:.1f} min",
                flush=True,
            )
            if on_epoch is not None:
                on_epoch(self.epoch, val_acc)
            if cfg.patience and stale >= cfg.patience:
                print(f"early stop: val accuracy has not improved for {stale} epochs (best {self.best_acc:.4f} at epoch {self.best_epoch})")
                break
            if cfg.time_limit_min and self.train_seconds / 60 >= cfg.time_limit_min:
                print(f"time limit of {cfg.time_limit_min} min reached")
                break

    def report(self) -> dict:
        """Evaluate the best checkpoint on val and test and write every report file."""
        best = torch.load(self.out / "best.pt", map_location=self.device, weights_only=False)
        model = self.eval_model()
        model.load_state_dict(best["state_dict"])
        metrics: dict = {
            "model": self.cfg.model,
            "parameters": count_parameters(model, trainable_only=False),
            "best_epoch": best["epoch"],
            "epochs_run": self.epoch,
            "train_minutes": round(self.train_seconds / 60, 2),
            "device": self.device,
            "torch_threads": torch.get_num_threads(),
            "classes": list(self.classes),
            "split_sizes": {k: len(v) for k, v in self.splits.items()},
        }
        for split, x, y in (("val", self.x_val, self.y_val), ("test", self.x_test, self.y_test)):
            logits = evaluate.predict(model, x, device=self.device)
            m = ev.classification_metrics(y.numpy(), logits.argmax(1), self.classes)
            metrics[split] = m
            evaluate.write_confusion(
                m["confusion_matrix"], self.classes, self.out / f"confusion_{split}", f"{self.cfg.model} {split}: top-1 {m['accuracy']:.3f}"
            )
            evaluate.write_predictions(
                self.out / f"predictions_{split}.csv", [str(s.path) for s in self.splits[split]], y.numpy(), logits, self.classes
            )
        evaluate.write_curves(self.history, self.out / "curves")
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        val, test = metrics["val"]["accuracy"], metrics["test"]["accuracy"]
        print(f"best epoch {best['epoch']}: val top-1 {val:.4f}, test top-1 {test:.4f} -> {self.out}")
        return metrics
