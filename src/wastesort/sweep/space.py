"""Search spaces, by name. Each maps an Optuna trial to ``train/train.py`` flags, so a trial
is exactly the training command it prints.

``simplecnn`` is seed 000's sweep as it lists it (base features 16/32/64, feature strategy
same/doubling/halving, filter 3/5, conv and dense activation relu/gelu/silu/mish, dense units
64-512, batch norm on/off, dropout 0.2-0.5, lr log-uniform 1e-4..1e-2, batch size 16/32/64,
augmentation on/off). ``lite`` fine-tunes the ImageNet-pretrained EfficientNet-Lite0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from wastesort.training.models import ACTIVATIONS, STRATEGIES


@dataclass(frozen=True)
class Budget:
    """What one sweep may spend: trials (the run cap), epochs per trial (Hyperband's maximum
    resource), the input side (``None``: searched or the model's default) and the share of
    the training split each trial trains on."""

    trials: int
    epochs: int
    input_size: int | None
    train_fraction: float = 1.0

    def argv(self) -> list[str]:
        flags = ["--epochs", str(self.epochs), "--train-fraction", str(self.train_fraction), "--patience", "0"]
        return flags + (["--input-size", str(self.input_size)] if self.input_size else [])


@dataclass(frozen=True)
class SearchSpace:
    """A named space: its distributions, the fixed flags every trial gets, the flag each
    parameter becomes, and its budgets (``cpu``: under an hour on 2 cores; ``gpu``: the
    seed's full budget)."""

    name: str
    model: str
    distributions: dict[str, BaseDistribution]
    fixed: tuple[str, ...]
    budgets: dict[str, Budget] = field(default_factory=dict)

    def suggest(self, trial: optuna.Trial) -> dict:
        """Draw every parameter through the trial's public ``suggest_*`` API."""
        params = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            elif isinstance(dist, FloatDistribution):
                params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                raise TypeError(f"{name}: unsupported distribution {dist!r}")
        return params

    def argv(self, params: dict) -> list[str]:
        """``train/train.py`` flags for ``params`` (without data, output or budget)."""
        flags = ["--model", self.model, *self.fixed]
        for name, value in params.items():
            flags += FLAG_RULES[name](value)
        return flags


def _value(flag: str):
    return lambda v: [flag, str(v)]


def _switch(on: list[str], off: list[str]):
    return lambda v: on if v else off


#: Parameter name -> the flags it becomes. One rule per parameter of every space.
FLAG_RULES = {
    "base_features": _value("--base-features"),
    "strategy": _value("--feature-strategy"),
    "kernel_size": _value("--kernel-size"),
    "conv_activation": _value("--conv-activation"),
    "dense_activation": _value("--dense-activation"),
    "dense_units": _value("--dense-units"),
    "batch_norm": _switch([], ["--no-batch-norm"]),
    "dropout": _value("--dropout"),
    "lr": _value("--lr"),
    "batch_size": _value("--batch-size"),
    "augmentation": _switch([], ["--no-augment"]),
    "backbone_lr_factor": _value("--backbone-lr-factor"),
    "freeze_epochs": _value("--freeze-epochs"),
    "resolution": _value("--input-size"),
    "mix_prob": _value("--mix-prob"),
    "label_smoothing": _value("--label-smoothing"),
    "head_dropout": _value("--head-dropout"),
}

SIMPLECNN = SearchSpace(
    name="simplecnn",
    model="simplecnn",
    distributions={
        "base_features": CategoricalDistribution([16, 32, 64]),
        "strategy": CategoricalDistribution(list(STRATEGIES)),
        "kernel_size": CategoricalDistribution([3, 5]),
        "conv_activation": CategoricalDistribution(sorted(ACTIVATIONS)),
        "dense_activation": CategoricalDistribution(sorted(ACTIVATIONS)),
        "dense_units": IntDistribution(64, 512),
        "batch_norm": CategoricalDistribution([True, False]),
        "dropout": FloatDistribution(0.2, 0.5),
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "batch_size": CategoricalDistribution([16, 32, 64]),
        "augmentation": CategoricalDistribution([True, False]),
    },
    fixed=("--conv-layers", "5", "--warmup-epochs", "1"),
    budgets={"cpu": Budget(trials=24, epochs=8, input_size=64, train_fraction=0.5), "gpu": Budget(trials=50, epochs=30, input_size=128)},
)

LITE = SearchSpace(
    name="lite",
    model="efficientnet_lite0",
    distributions={
        "lr": FloatDistribution(1e-4, 3e-3, log=True),
        "backbone_lr_factor": FloatDistribution(0.03, 1.0, log=True),
        "freeze_epochs": IntDistribution(0, 3),
        "resolution": CategoricalDistribution([160, 192, 224]),
        "mix_prob": FloatDistribution(0.0, 1.0),
        "label_smoothing": FloatDistribution(0.0, 0.2),
        "head_dropout": FloatDistribution(0.0, 0.5),
    },
    fixed=("--weights", "imagenet", "--ema-decay", "0.999", "--warmup-epochs", "1"),
    budgets={
        "cpu": Budget(trials=20, epochs=4, input_size=None, train_fraction=0.25),
        "gpu": Budget(trials=50, epochs=25, input_size=None),
    },
)

SPACES: dict[str, SearchSpace] = {s.name: s for s in (SIMPLECNN, LITE)}
