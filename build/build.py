"""Build, gate and install the precision variants of the committed model (``make build``).

    python build/build.py                         # ONNX Runtime FP32/INT8/FP16, TTA (FP32, INT8) if kept; TensorRT on a GPU
    python build/build.py --variants onnx_int8 --threshold 0.5
    python build/build.py --force                 # install even what the accuracy gate refuses

Each variant is evaluated on the test split of the model's committed manifest, timed side by
side with FP32, and installed as ``<net>_<variant>`` with its ensemble when it passes the gate;
then the served default is marked and ``build/report.{md,json}`` and
``build/served_default.json`` are written (:func:`wastesort.variants.workflow.build_variants`).
Exits 1 if the gate refused a variant (unless ``--force``), 2 if the build cannot start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import DEFAULT_NET
from wastesort.variants.workflow import VARIANTS, BuildError, BuildSettings, build_variants

DEFAULTS = BuildSettings()


def parse_args(argv: list[str] | None) -> BuildSettings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=DEFAULT_NET, help="committed model under models/ (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="ImageFolder root the manifest's paths are relative to")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--calibration-images", type=int, default=DEFAULTS.calibration_images, help="training images for INT8 calibration")
    parser.add_argument("--threshold", type=float, default=DEFAULTS.threshold, help="max top-1 points lost vs FP32 (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="install variants the gate refuses, and exit 0")
    parser.add_argument("--repository", type=Path, default=DEFAULTS.repository)
    parser.add_argument("--out", type=Path, default=DEFAULTS.out, help="built models, caches (default: %(default)s)")
    parser.add_argument("--report", type=Path, default=DEFAULTS.report)
    parser.add_argument("--bench-batch", type=int, default=DEFAULTS.bench_batch)
    parser.add_argument("--bench-iters", type=int, default=DEFAULTS.bench_iters)
    args = parser.parse_args(argv)
    options = vars(args) | {"variants": tuple(v.strip() for v in args.variants.split(",") if v.strip())}
    try:
        return BuildSettings(**options)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        result = build_variants(settings)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {result.report.with_suffix('.md')} and {result.report}")
    if result.refused and not settings.force:
        print(f"error: the accuracy gate refused {', '.join(result.refused)} (use --force to install anyway)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
