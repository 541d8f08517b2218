"""Write (or check) the Triton model repository for an exported ONNX model.

    python build/repository.py                       # models/mobilenet_v3_small.onnx -> model_repository/
    python build/repository.py --check               # exit 1 if the committed repository has drifted

Writes ``preprocess``, ``<net>_onnx`` (Python-backend ORT config plus ``configs/gpu.pbtxt`` for
Triton's onnxruntime backend; the ONNX file copied to ``1/model.onnx``) and ``ensemble_<net>``,
every config built as a ``ModelConfig`` protobuf message from the model's own metadata.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastesort.paths import REPO_ROOT
from wastesort.shipped import ShippedModel
from wastesort.triton.config import ServingOptions, check_repository, write_repository


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, default=ShippedModel().onnx, help="exported model (default: %(default)s)")
    parser.add_argument("--net", default=None, help="model family name used in model names (default: the ONNX file's stem)")
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--max-batch-size", type=int, default=ServingOptions.max_batch_size)
    parser.add_argument("--queue-delay-us", type=int, default=ServingOptions.queue_delay_us)
    parser.add_argument(
        "--max-pixels", type=int, default=ServingOptions.max_pixels, help="refuse images declaring more pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--max-image-bytes", type=int, default=ServingOptions.max_image_bytes, help="refuse longer encoded images (default: %(default)s)"
    )
    parser.add_argument("--check", action="store_true", help="only compare with what is on disk; exit 1 on any difference")
    args = parser.parse_args(argv)
    net = args.net or args.onnx.stem
    opts = ServingOptions(
        max_batch_size=args.max_batch_size,
        queue_delay_us=args.queue_delay_us,
        max_pixels=args.max_pixels,
        max_image_bytes=args.max_image_bytes,
    )
    if args.check:
        problems = check_repository(args.repository, args.onnx, net, opts)
        for problem in problems:
            print(f"{args.repository}: {problem}", file=sys.stderr)
        print("repository is in sync with the generator" if not problems else "run: python build/repository.py", file=sys.stderr)
        return 1 if problems else 0
    for path in write_repository(args.repository, args.onnx, net, opts):
        print(f"wrote {path.relative_to(args.repository.parent) if path.is_relative_to(args.repository.parent) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
