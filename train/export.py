"""Export a run's best checkpoint to ONNX, then verify it against PyTorch on real images.

The images are the run's held-out (val + test) photos from its manifest, preprocessed by the
serving preprocessing; ``--images DIR`` uses another folder instead. Exits non-zero if
ONNX Runtime and PyTorch disagree on the top-1 class of any image, or if the largest logit
difference exceeds the tolerance.

Example:
    python train/export.py --run runs/simplecnn --out models/simplecnn.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastesort.data import IMAGE_EXTENSIONS
from wastesort.training.export import LOGIT_ATOL, OPSET, ExportError, export_run, held_out_images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder holding best.pt, config.json and manifest.csv")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--images", type=Path, default=None, help="verify on images under this folder instead of the run's held-out split")
    p.add_argument("--limit", type=int, default=1000, help="at most this many verification images")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--atol", type=float, default=LOGIT_ATOL, help="largest accepted |logit difference|")
    p.add_argument("--tta", action="store_true", help="export the flip-averaged (test-time augmentation) model")
    args = p.parse_args(argv)

    if args.images:
        paths = sorted(q for q in args.images.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)[: args.limit]
    else:
        paths = held_out_images(args.run, args.limit)
    if not paths:
        print("error: no images to verify the export with", file=sys.stderr)
        return 2
    try:
        result = export_run(args.run, args.out, paths, args.opset, args.atol, args.tta)
    except ExportError as exc:
        print(f"error: export verification failed: {exc}", file=sys.stderr)
        return 1
    size_mb = args.out.stat().st_size / 1e6
    print(
        f"exported {args.out} ({size_mb:.1f} MB, opset {args.opset}); verified on {result['images']} held-out images: "
        f"top-1 agreement {result['top1_agreement']:.0%}, max |logit diff| {result['max_abs_logit_diff']:.1e} (tolerance {args.atol:.0e})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
