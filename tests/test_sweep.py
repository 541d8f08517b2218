"""The sweep: seed 000's search space, every trial a valid train/train.py command, a real
two-trial study on synthetic photos that writes its report and resumes from its database,
and Hyperband pruning a clearly worse trial."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import sweep as sweep_cli  # noqa: E402

from wastesort.sweep import study as sweep_study  # noqa: E402
from wastesort.sweep.space import LITE, SIMPLECNN, SPACES  # noqa: E402
from wastesort.training.cli import parse_args  # noqa: E402

# Seed 000's sweep, as its README lists it.
SEED_000 = {
    "base_features": CategoricalDistribution([16, 32, 64]),
    "strategy": CategoricalDistribution(["same", "doubling", "halving"]),
    "kernel_size": CategoricalDistribution([3, 5]),
    "conv_activation": CategoricalDistribution(["gelu", "mish", "relu", "silu"]),
    "dense_activation": CategoricalDistribution(["gelu", "mish", "relu", "silu"]),
    "dense_units": IntDistribution(64, 512),
    "batch_norm": CategoricalDistribution([True, False]),
    "dropout": FloatDistribution(0.2, 0.5),
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "batch_size": CategoricalDistribution([16, 32, 64]),
    "augmentation": CategoricalDistribution([True, False]),
}


def test_simplecnn_space_is_seed_000s() -> None:
    assert SIMPLECNN.distributions == SEED_000
    assert SIMPLECNN.budgets["gpu"].trials == 50  # the seed's run cap


@pytest.mark.parametrize("space", sorted(SPACES))
def test_every_trial_is_a_valid_training_command(space: str, tmp_path: Path) -> None:
    s = SPACES[space]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(12):
        trial = study.ask()
        params = s.suggest(trial)
        cfg, _ = parse_args(["--data", "d", "--out", str(tmp_path), *s.argv(params), *s.budgets["cpu"].argv()])
        assert cfg.model == s.model
        assert cfg.lr == pytest.approx(params["lr"])
        if space == "simplecnn":
            c = cfg.simplecnn
            assert (c.base_features, c.strategy, c.kernel_size, c.dense_units) == (
                params["base_features"],
                params["strategy"],
                params["kernel_size"],
                params["dense_units"],
            )
            assert (c.conv_activation, c.dense_activation, c.batch_norm) == (
                params["conv_activation"],
                params["dense_activation"],
                params["batch_norm"],
            )
            assert c.dropout == pytest.approx(params["dropout"])
            assert cfg.batch_size == params["batch_size"] and cfg.augment == params["augmentation"]
            assert cfg.input_size == s.budgets["cpu"].input_size
        else:
            assert cfg.input_size == params["resolution"] and cfg.freeze_epochs == params["freeze_epochs"]
            assert cfg.head_dropout == pytest.approx(params["head_dropout"])
            assert cfg.weights == "imagenet"
        study.tell(trial, 0.5)


def test_hyperband_prunes_a_clearly_worse_trial(tmp_path: Path) -> None:
    st = sweep_study.open_study("prune", sweep_study.default_storage(tmp_path), epochs=9)

    def objective(trial: optuna.Trial) -> float:
        quality = trial.suggest_float("quality", 0.0, 1.0)
        for epoch in range(1, 10):
            trial.report(quality, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return quality

    for _ in range(9):
        st.enqueue_trial({"quality": 0.9})
    for _ in range(9):
        st.enqueue_trial({"quality": 0.05})
    st.optimize(objective, n_trials=18)
    bad = [t for t in st.trials if t.params["quality"] == 0.05]
    good = [t for t in st.trials if t.params["quality"] == 0.9]
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in bad)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in good)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_two_trial_sweep_writes_its_report_and_resumes(synthetic_root: Path, tmp_path: Path) -> None:
    args = [
        "--data",
        str(synthetic_root),
        "--study",
        "tiny",
        "--out",
        str(tmp_path / "work"),
        "--report",
        str(tmp_path / "report"),
        "--epochs",
        "2",
        "--input-size",
        "32",
        "--train-args",
        "--conv-layers 3 --threads 2",
    ]
    assert sweep_cli.main([*args, "--trials", "2"]) == 0
    report = tmp_path / "report"
    rows = _rows(report / "trials.csv")
    assert [r["number"] for r in rows] == ["0", "1"]
    assert all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    assert set(SIMPLECNN.distributions) <= set(rows[0])
    assert len(list(report.glob("*.png"))) >= 2
    readme = (report / "README.md").read_text()
    assert "## Correlation with val accuracy" in readme and "preset `cpu`" in readme
    first = {r["number"]: r["base_features"] for r in rows}
    # resume: the same study in the same database gains one trial and keeps the first two
    assert sweep_cli.main([*args, "--trials", "3"]) == 0
    rows = _rows(report / "trials.csv")
    assert len(rows) == 3 and {r["number"]: r["base_features"] for r in rows[:2]} == first
    assert (tmp_path / "work" / "trials" / "2" / "best.pt").is_file() or rows[2]["state"] == "PRUNED"
    assert "train/train.py" in readme


def test_lite_space_budget_is_stated() -> None:
    assert LITE.budgets["cpu"].input_size is None  # resolution is searched
    assert "--weights" in LITE.fixed
