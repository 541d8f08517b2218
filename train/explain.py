"""Explainability report for a classifier: sample-prediction grid, first-layer filters and
feature maps, Grad-CAM and guided backpropagation (Captum) on the model's own test photos.

Examples:
    python train/explain.py                                  # the shipped model -> docs/explain/
    python train/explain.py --checkpoint runs/simplecnn/best.pt --out runs/simplecnn/explain
    python train/explain.py --onnx models/mobilenet_v3_small.onnx --out /tmp/explain   # no gradients
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wastesort.data import SPLITS, DatasetError, read_manifest
from wastesort.explain.report import Subject, write_report
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import DEFAULT_NET, ShippedModel


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--net", default=DEFAULT_NET, help="a committed model: its training checkpoint if present, else its ONNX")
    src.add_argument("--checkpoint", type=Path, help="a run's best.pt (split: the run's manifest.csv)")
    src.add_argument("--onnx", type=Path, help="an ONNX classifier alone (split: --manifest)")
    p.add_argument("--manifest", type=Path, help="split manifest for --onnx (default: models/<stem>.manifest.csv)")
    p.add_argument("--data", type=Path, default=None, help=f"photo root (default: the run's, or {DEFAULT_TRASHNET})")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--out", type=Path, default=Path("docs/explain"))
    return p.parse_args(argv)


def subject_and_photos(args: argparse.Namespace):
    """(Subject, photos of the split) for whichever source was named."""
    if args.checkpoint:
        run = args.checkpoint.parent
        data = args.data or Path(json.loads((run / "config.json").read_text())["data"])
        return Subject.from_checkpoint(args.checkpoint), read_manifest(run / "manifest.csv", data)[args.split]
    data = args.data or DEFAULT_TRASHNET
    if args.onnx:
        manifest = args.manifest or args.onnx.with_suffix(".manifest.csv")
        return Subject.from_onnx(args.onnx), read_manifest(manifest, data)[args.split]
    shipped = ShippedModel(args.net)
    checkpoint = shipped.source_run / "best.pt" if shipped.source_run else None
    if checkpoint and checkpoint.is_file():
        subject = Subject.from_checkpoint(checkpoint)
    else:
        print(f"{checkpoint or 'no export record'}: no training checkpoint here, explaining {shipped.onnx} without gradients")
        subject = Subject.from_onnx(shipped.onnx)
    return subject, shipped.split(args.split, data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        subject, photos = subject_and_photos(args)
        missing = [s.path for s in photos if not s.path.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} photos of the {args.split} split are missing, e.g. {missing[0]} (--data)")
    except (DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    readme = write_report(subject, photos, args.out, args.split)
    print(f"{subject.name}: {len(photos)} {args.split} photos -> {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
