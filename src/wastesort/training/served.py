"""The served file's own figures, with their uncertainty: :func:`served_record` measures the file
the committed default ensemble serves (:attr:`ShippedModel.served_onnx`: the TTA export where the
served-default rule picks it) on the val and test splits through ONNX Runtime and the serving preprocessing, and gives
each split's top-1 and per-class F1 a percentile bootstrap interval (scipy's ``bootstrap``,
photos resampled with their predictions). ``make release`` records it (:func:`record_served`) as
``metrics.json``'s ``served``, from the logit adjustment's own measurement where there is one
(:func:`~wastesort.training.logit_adjust.adjust_shipped`), and the model card shows it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from wastesort.evaluation import CONFIDENCE, RESAMPLES, classification_metrics, split_tensors, with_interval
from wastesort.inference import OnnxClassifier
from wastesort.shipped import LOGITS, ShippedModel
from wastesort.training.evaluate import write_confusion

#: The splits a release measures its files on (served figures, calibration); train is never scored.
SPLITS = ("val", "test")


def served_figures(file: Path, by_split: dict[str, dict], classes: tuple[str, ...], resamples: int = RESAMPLES) -> dict:
    """The ``served`` record of ``file`` from its metrics per split (:data:`SPLITS`), each with
    :func:`with_interval`."""
    return {
        "file": file.name,
        "measured": "ONNX Runtime, serving preprocessing",
        "intervals": f"{CONFIDENCE:.0%} percentile bootstrap over photos, {resamples} resamples",
        **{split: with_interval(by_split[split], classes, resamples) for split in SPLITS},
    }


def served_record(model: ShippedModel, data: Path, resamples: int = RESAMPLES) -> dict:
    """:func:`served_figures` of :attr:`ShippedModel.served_onnx`, measured on the photos of
    ``model``'s split under ``data``.

    Raises:
        DatasetError: the split's photos are not under ``data``.
    """
    classifier = OnnxClassifier(model.served_onnx)
    by_split = {}
    for split in SPLITS:
        x, y = split_tensors(model.split(split, data), classifier.contract, split)
        by_split[split] = classification_metrics(y, classifier.batched(LOGITS, x).argmax(1), classifier.labels)
    return served_figures(model.served_onnx, by_split, classifier.labels, resamples)


def record_served(model: ShippedModel, record: dict) -> None:
    """Write ``record`` (:func:`served_figures`) into ``model``'s ``metrics.json`` as ``served``
    and draw its test confusion matrix as the committed confusion PNG."""
    metrics = json.loads(model.metrics.read_text())
    metrics["served"] = record
    model.metrics.write_text(json.dumps(metrics, indent=2))
    with tempfile.TemporaryDirectory() as tmp:
        stem = Path(tmp) / "confusion_test"
        title = f"{model.net} (served: {record['file']}), test split"
        write_confusion(record["test"]["confusion_matrix"], tuple(record["test"]["per_class"]), stem, title)
        shutil.copy(stem.with_suffix(".png"), model.confusion)


def summary(record: dict) -> str:
    """One line per split: the served file's top-1 and its rarest class's F1, with intervals."""
    lines = []
    for split in SPLITS:
        m = record[split]
        rare = min(m["per_class"], key=lambda c: m["per_class"][c]["support"])
        (lo, hi), (flo, fhi) = m["interval"]["top1"], m["interval"]["f1"][rare]
        lines.append(
            f"served {record['file']} {split}: top-1 {m['accuracy']:.4f} [{lo:.4f}, {hi:.4f}], "
            f"{rare} F1 {m['per_class'][rare]['f1']:.3f} [{flo:.3f}, {fhi:.3f}]"
        )
    return "\n".join(lines)
