"""Evaluate an exported ONNX model on labelled images, with ONNX Runtime only.

Images come from an ImageFolder dataset (``--data``; every image, or one split of a run's
manifest with ``--run``/``--split``). Preprocessing and labels are read from the model's
own metadata, exactly as a deployment would. Prints top-1 and a per-class table (scikit-learn)
and optionally writes them as JSON.

Example:
    python train/evaluate.py --model models/mobilenet_v3_small.onnx --data ../shared/data/trashnet \
        --run runs/mobilenet_v3_small --split test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sklearn.metrics import classification_report

from wastesort.data import DatasetError, read_manifest, report_skipped, scan_classes_of
from wastesort.evaluation import classification_metrics, split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.shipped import ShippedModel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ShippedModel().onnx, help="ONNX file (default: %(default)s)")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder dataset root")
    p.add_argument("--run", type=Path, default=None, help="run folder whose manifest.csv selects the images")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--json", type=Path, default=None, help="write the metrics here")
    args = p.parse_args(argv)

    clf = OnnxClassifier(args.model)
    if args.run:
        samples = read_manifest(args.run / "manifest.csv", args.data)[args.split]
        source = f"{args.split} split of {args.run}"
    else:
        try:
            scan = scan_classes_of(args.data, clf.labels)  # any subset of the classes (a site may have no trash)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report_skipped(scan.skipped)
        samples, source = scan.samples, f"every image under {args.data}"
    images, y_true = split_tensors(samples, clf.contract)
    y_pred = clf.probabilities(images).argmax(1)
    metrics = classification_metrics(y_true, y_pred, clf.labels)
    print(f"{args.model} on {len(samples)} images ({source}): top-1 {metrics['accuracy']:.4f}")
    print(
        classification_report(y_true, y_pred, labels=list(range(len(clf.labels))), target_names=list(clf.labels), digits=3, zero_division=0)
    )
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "images": len(samples), "source": source, **metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
