"""The client's ``--truth-from-folder`` report: which folder is a photo's true class, and photos
that no class folder holds (not sorted yet) are counted apart instead of being scored against
a made-up class."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from wastesort.labels import LABELS


def test_the_true_class_is_the_nearest_folder_named_after_a_class(client_module: ModuleType, tmp_path: Path) -> None:
    labels = set(LABELS)
    site = tmp_path / "site"
    assert client_module.true_class(site / "glass" / "a.jpg", labels) == "glass"
    assert client_module.true_class(site / "glass" / "day2" / "b.jpg", labels) == "glass"  # like train/evaluate.py
    assert client_module.true_class(site / "c.jpg", labels) is None


def test_photos_outside_the_class_folders_are_not_scored(client_module: ModuleType, tmp_path: Path) -> None:
    Result = client_module.Result
    site = tmp_path / "site"
    results = [
        Result(str(site / "glass" / "a.jpg"), "glass", 0.9, [("glass", 0.9)]),
        Result(str(site / "glass" / "day2" / "b.jpg"), "metal", 0.95, [("metal", 0.95)]),
        Result(str(site / "metal" / "c.jpg"), "metal", 0.5, [("metal", 0.5)], unsure=True),
        Result(str(site / "d.jpg"), "paper", 0.97, [("paper", 0.97)]),
        Result(str(site / "e.jpg"), "paper", 0.97, [("paper", 0.97)]),
    ]
    report = client_module.accuracy_report(results, set(LABELS))
    lines = report.splitlines()
    assert lines[0].startswith(f"not scored: 2 images in {site}: no folder above them is named after a class")
    assert lines[1].startswith("top-1 0.6667 (2 of 3 images")
    assert lines[2].startswith("answered 2 of 3 (66.7% coverage): 0.5000 right among the answered; answered wrongly: 33.3%")
    per_class = {line.split(":")[0].strip(): line for line in lines[3:]}
    assert set(per_class) == {"glass", "metal"}  # no class line named after site/
    assert per_class["glass"].endswith("(2 images)") and "recall 0.500" in per_class["glass"]


def test_without_an_answer_nothing_is_scored(client_module: ModuleType, tmp_path: Path) -> None:
    results = [client_module.Result(str(tmp_path / "glass" / "a.jpg"), error="cannot reach")]
    assert client_module.accuracy_report(results, set()) == f"not scored: 1 image in {tmp_path / 'glass'}: no image was classified"
