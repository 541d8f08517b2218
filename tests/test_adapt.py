"""Site adaptation (``make adapt``): a site folder named anything but the six classes is refused
with the six listed and nothing written; on a small synthetic site with three of the six
classes the adapted file is right on more of the site's photos, keeps the other classes'
answers on TrashNet's test photos, carries the release's contract and a fresh calibration,
``train/evaluate.py`` scores it like any other file, and ``make release RUN=OUT`` promotes it
(once: the folder is then adapted from another file than the committed one)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from wastesort.confidence import THRESHOLD_PARAMETER
from wastesort.confidence import read as read_confidence
from wastesort.contract import PreprocessContract
from wastesort.evaluation import split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.labels import LABELS
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.shipped import ShippedModel
from wastesort.synthetic import generate
from wastesort.training.adapt import (
    TRAINED_TRASHNET_KEY,
    AdaptConfig,
    AdaptError,
    adapt_site,
    report_markdown,
    scan_site,
    trained_trashnet_top1,
)
from wastesort.triton.config import parse_config
from wastesort.triton.naming import classifier_name, ensemble_name

SITE_CLASSES = ("glass", "metal", "paper")


def test_a_folder_that_is_not_a_class_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    site = generate(tmp_path / "site", per_class=2, labels=("glass",))
    (site / "bottles").mkdir()
    with pytest.raises(AdaptError, match="bottles") as caught:
        adapt_site(site, tmp_path / "out", DEFAULT_TRASHNET)
    assert all(label in str(caught.value) for label in LABELS)
    assert not (tmp_path / "out").exists()
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train" / "adapt.py"), "--data", str(site), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "bottles" in done.stderr and "cardboard" in done.stderr and not (tmp_path / "out").exists()


def test_the_site_photos_take_the_models_label_order(tmp_path: Path) -> None:
    site = generate(tmp_path / "site", per_class=3, labels=SITE_CLASSES)
    labels = {LABELS[s.label] for s in scan_site(site).samples}
    assert labels == set(SITE_CLASSES)  # paper is the model's index 3 even though it is the site's third folder


def test_an_empty_class_folder_is_a_class_the_site_does_not_show(tmp_path: Path) -> None:
    site = generate(tmp_path / "site", per_class=3, labels=SITE_CLASSES)
    for label in LABELS:  # a person made all six folders, and had no photo for some
        (site / label).mkdir(exist_ok=True)
    scan = scan_site(site)
    assert {LABELS[s.label] for s in scan.samples} == set(SITE_CLASSES) and len(scan.samples) == 9
    assert sorted(path.name for path, _ in scan.skipped) == sorted(set(LABELS) - set(SITE_CLASSES))
    for photo in [p for label in SITE_CLASSES for p in (site / label).iterdir()]:
        photo.unlink()
    with pytest.raises(AdaptError, match="no usable image"):
        scan_site(site)


@pytest.mark.slow
def test_adapting_to_a_three_class_site_learns_it_and_keeps_the_rest(tmp_path: Path) -> None:
    if not DEFAULT_TRASHNET.is_dir():
        pytest.skip(f"no TrashNet photos at {DEFAULT_TRASHNET} to replay")
    site = generate(tmp_path / "site", per_class=12, seed=3, labels=SITE_CLASSES)
    broken = site / "glass" / "half_uploaded.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    report = adapt_site(site, tmp_path / "out", DEFAULT_TRASHNET, config=AdaptConfig(epochs=4, replay=1.5))
    # an unreadable photo a person sorted is named in the report, not dropped unsaid
    assert [path for path, _ in report["skipped"]] == [str(broken)]
    assert str(broken) in (tmp_path / "out" / "report.md").read_text()
    before, after = report["before"], report["after"]
    assert after["site_val"]["accuracy"] > before["site_val"]["accuracy"] + 0.2
    model = ShippedModel()
    adapted = tmp_path / "out" / "model.onnx"
    assert PreprocessContract.from_onnx(str(adapted)) == PreprocessContract.from_onnx(str(model.onnx))
    assert read_confidence(adapted) is not None and json.loads((tmp_path / "out" / "report.json").read_text()) == report
    # the classes the site does not show keep their answers on TrashNet's test photos
    test = [s for s in model.split("test", DEFAULT_TRASHNET) if LABELS[s.label] not in SITE_CLASSES]
    x, y = split_tensors(test, PreprocessContract.from_onnx(str(model.onnx)))
    kept = [float((OnnxClassifier(path).probabilities(x).argmax(1) == y).mean()) for path in (model.onnx, adapted)]
    assert kept[1] >= kept[0] - 0.05, kept
    scores = tmp_path / "scores.json"
    cmd = [sys.executable, str(REPO_ROOT / "train" / "evaluate.py"), "--model", str(adapted), "--data", str(site), "--json", str(scores)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert 0.0 <= json.loads(scores.read_text())["accuracy"] <= 1.0 and np.isfinite(json.loads(scores.read_text())["accuracy"])

    _release_the_adapted_folder(tmp_path, model, adapted)


def _release_the_adapted_folder(tmp_path: Path, model: ShippedModel, adapted: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for path in model.folder.glob(f"{model.net}.*"):
        shutil.copy(path, models / path.name)
    card, repository = tmp_path / "MODEL_CARD.md", tmp_path / "model_repository"
    cmd = [sys.executable, str(REPO_ROOT / "train" / "release.py"), "--run", str(adapted.parent), "--models-dir", str(models)]
    cmd += ["--card", str(card), "--repository", str(repository)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    released = ShippedModel(model.net, folder=models)
    assert released.onnx.read_bytes() == adapted.read_bytes() and not released.tta_onnx.exists()
    assert released.qat_problem() is not None and not released.qat_onnx.exists()  # the QAT copy was of the old export
    metrics = json.loads(released.metrics.read_text())
    threshold = read_confidence(adapted).threshold
    assert metrics["served"]["file"] == released.onnx.name and metrics["confidence"]["files"]["plain"]["threshold"] == round(threshold, 6)
    assert metrics["adapted"]["classes"] == list(SITE_CLASSES) and "## Adapted to a site" in card.read_text()
    report = json.loads((adapted.parent / "report.json").read_text())
    assert metrics["adapted"][TRAINED_TRASHNET_KEY] == report[TRAINED_TRASHNET_KEY] == report["before"]["trashnet_test"]["accuracy"]
    for name in (classifier_name(model.net), ensemble_name(model.net)):  # the client reads the threshold from these
        config = parse_config(repository / name / "config.pbtxt")
        assert float(config.parameters[THRESHOLD_PARAMETER].string_value) == pytest.approx(threshold, rel=1e-5)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "adapt it again" in again.stderr


def _report(site_answered: float, val_answered: float, trashnet: tuple[float, float]) -> dict:
    """A report as :func:`adapt_site` writes it, with the figures the warnings read."""
    figures = {"accuracy": 0.9, "macro_f1": 0.9, "coverage": 0.9, "accuracy_answered": 0.98, "answered_wrong": 0.01}
    when = {
        name: {"file": "model.onnx", "site_val": {**figures, "coverage": site}, "trashnet_test": {**figures, "accuracy": top1}}
        for name, site, top1 in (("before", 0.0, trashnet[0]), ("after", site_answered, trashnet[1]))
    }
    return {
        "site": "site", "classes": list(SITE_CLASSES), "photos": {"site_train": 70, "site_val": 30, "replay": 420},
        "skipped": [], "config": asdict(AdaptConfig()), "seconds": 1.0, "machine": "here",
        "calibration": {"temperature": 1.0, "threshold": 0.9, "val": {**figures, "coverage": val_answered}}, **when,
    }  # fmt: skip


def test_the_report_warns_when_few_of_the_sites_photos_are_answered() -> None:
    # the threshold is chosen on the site's val photos with TrashNet's, which pass it easily:
    # the warning is about the site's own share
    warned = report_markdown(_report(site_answered=0.4, val_answered=0.8, trashnet=(0.94, 0.94)))
    assert "Only 40.0% of the site's val photos" in warned
    assert "Only" not in report_markdown(_report(site_answered=0.6, val_answered=0.3, trashnet=(0.94, 0.94)))


def test_the_report_warns_when_trashnet_is_forgotten() -> None:
    assert "fell by" not in report_markdown(_report(0.9, 0.9, trashnet=(0.9439, 0.9346)))
    warned = report_markdown(_report(0.9, 0.9, trashnet=(0.9439, 0.9283)))
    assert "TrashNet's test top-1 fell by 1.6 points" in warned and "--replay 9" in warned


def test_forgetting_adds_up_over_adaptations_of_adapted_files() -> None:
    assert trained_trashnet_top1({"test": {}}, before=0.93) == 0.93  # never adapted: the model being adapted
    first = _report(0.9, 0.9, trashnet=(0.9439, 0.9283))
    assert trained_trashnet_top1({"adapted": first}, before=0.9283) == 0.9439  # released before the key existed
    carried = {**first, TRAINED_TRASHNET_KEY: 0.95}
    assert trained_trashnet_top1({"adapted": carried}, before=0.9283) == 0.95
    # each step loses little, together they lose more than the report allows
    again = {**_report(0.9, 0.9, trashnet=(0.9283, 0.9252)), TRAINED_TRASHNET_KEY: 0.9439}
    warned = report_markdown(again)
    assert "fell by 1.9 points since the network as trained" in warned and "this adaptation alone: 0.9283" in warned
    assert "fell by" not in report_markdown({**again, TRAINED_TRASHNET_KEY: 0.9283})
