"""One trial = one ordinary training run, built from the ``train/train.py`` flags the space
and budget give, reporting validation accuracy after every epoch to Optuna's pruner."""

from __future__ import annotations

import shlex
from pathlib import Path

import optuna

from wastesort.sweep.space import Budget, SearchSpace
from wastesort.training.cli import TRAIN_SCRIPT, parse_args
from wastesort.training.trainer import TrainConfig, TrainData, Trainer, contract_for, load_data

#: User attributes every finished trial carries (read by the report).
ATTR_EPOCHS, ATTR_BEST, ATTR_ARGV = "epochs_run", "best_val_acc", "train_argv"


def train_command(argv: list[str], data: str, out: str) -> str:
    """The shell command that reproduces a trial (or a full run) with ``train/train.py``."""
    return shlex.join(["python", TRAIN_SCRIPT, "--data", data, "--out", out, *argv])


class Objective:
    """Callable for :meth:`optuna.Study.optimize`. Data (split and tensors) is loaded once per
    preprocessing contract and shared by the trials that use it; each trial writes an ordinary
    run folder under ``out/trials/<number>``."""

    def __init__(self, space: SearchSpace, budget: Budget, data: str, out: Path, extra: list[str] | None = None) -> None:
        self.space, self.budget, self.data_root, self.out = space, budget, data, Path(out)
        self.extra = list(extra or [])
        self._cache: dict[tuple, TrainData] = {}

    def trial_argv(self, params: dict) -> list[str]:
        """Flags of one trial: the space's, the budget's, then the caller's extras."""
        return [*self.space.argv(params), *self.budget.argv(), *self.extra]

    def _data(self, cfg: TrainConfig) -> TrainData:
        key = (cfg.data, cfg.split, cfg.seed, cfg.train_fraction, contract_for(cfg, ()))
        if key not in self._cache:
            self._cache[key] = load_data(cfg)
        return self._cache[key]

    def __call__(self, trial: optuna.Trial) -> float:
        argv = self.trial_argv(self.space.suggest(trial))
        trial.set_user_attr(ATTR_ARGV, argv)
        cfg, _ = parse_args(["--data", self.data_root, "--out", str(self.out / "trials" / str(trial.number)), *argv])
        trainer = Trainer(cfg, data=self._data(cfg))

        def on_epoch(epoch: int, val_acc: float) -> None:
            trial.report(val_acc, epoch)
            trial.set_user_attr(ATTR_EPOCHS, epoch)
            trial.set_user_attr(ATTR_BEST, trainer.best_acc)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val accuracy {val_acc:.4f} after epoch {epoch}")

        trainer.fit(on_epoch)
        return trainer.best_acc
