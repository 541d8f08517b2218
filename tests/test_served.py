"""The served file's figures (:mod:`wastesort.training.served`): bootstrap intervals that
resample photos with their predictions, and the committed model card rebuilt from the committed
files alone (no runs) equal to ``MODEL_CARD.md``; with ``../shared`` present, the committed served
record reproduced by the served file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wastesort.data import DatasetError
from wastesort.evaluation import intervals
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.shipped import ShippedModel
from wastesort.training.card import build_card, notes_of
from wastesort.training.served import served_record

CLASSES = ("a", "b", "c")


def _predictions(n: int, error: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    wrong = rng.random(n) < error
    return y, np.where(wrong, (y + 1) % len(CLASSES), y)


def test_intervals_hold_the_figure_and_narrow_with_more_photos() -> None:
    y, p = _predictions(300, 0.1, 0)
    small = intervals(y, p, CLASSES, resamples=500)
    accuracy = float(np.mean(y == p))
    assert small["top1"][0] < accuracy < small["top1"][1]  # resampled in pairs: unpaired draws would give about 1/3
    assert small["top1"][0] > 0.85 and small["top1"][1] < 0.95
    y4, p4 = np.tile(y, 4), np.tile(p, 4)  # the same figures on four times the photos
    large = intervals(y4, p4, CLASSES, resamples=500)
    for c in CLASSES:
        assert large["f1"][c][1] - large["f1"][c][0] < 0.7 * (small["f1"][c][1] - small["f1"][c][0])
    assert intervals(y, p, CLASSES, resamples=500) == small  # repeatable
    assert intervals(y, y, CLASSES, resamples=200)["top1"] == [1.0, 1.0]


def test_the_committed_card_is_what_the_committed_files_give() -> None:
    """``MODEL_CARD.md`` is rebuilt from ``models/`` and the release record alone (the runs are
    never committed), so it cannot drift from the metrics it shows."""
    model = ShippedModel()
    run = json.loads(model.metrics.read_text())["release"]["run"]
    card = build_card(Path(run), model.onnx, notes_of(model.onnx), REPO_ROOT)
    assert card == (REPO_ROOT / "MODEL_CARD.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_TRASHNET.is_dir(), reason=f"real TrashNet photos not found at {DEFAULT_TRASHNET}")
def test_the_committed_served_record_is_the_served_files() -> None:
    model = ShippedModel()
    recorded = json.loads(model.metrics.read_text())["served"]
    try:
        measured = served_record(model, DEFAULT_TRASHNET, resamples=100)
    except DatasetError as exc:
        pytest.skip(str(exc))
    assert measured["file"] == recorded["file"] == model.served_onnx.name
    for split in ("val", "test"):
        assert measured[split]["confusion_matrix"] == recorded[split]["confusion_matrix"]
