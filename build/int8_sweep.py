"""The figures behind the INT8 defaults: several ``quantize_static`` settings on the committed
model, each evaluated on the test split and timed side by side with FP32 in one run.

    python build/int8_sweep.py [--data ../shared/data/trashnet]   # writes build/int8_sweep.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from wastesort.contract import PreprocessContract
from wastesort.data import read_manifest
from wastesort.paths import DEFAULT_TRASHNET, MODELS_DIR, REPO_ROOT
from wastesort.variants import gate as g
from wastesort.variants.calibration import calibration_tensor, select_calibration
from wastesort.variants.ort import Int8Settings, quantize_int8

CANDIDATES = {
    "default": Int8Settings(),
    "all ops, percentile": Int8Settings(exclude_ops=()),
    "all ops, minmax": Int8Settings(exclude_ops=(), method="MinMax"),
    "all ops, per-tensor": Int8Settings(exclude_ops=(), per_channel=False),
    "all ops, S8S8": Int8Settings(exclude_ops=(), activation="QInt8"),
    "Conv/Gemm only": Int8Settings(exclude_ops=(), only_ops=("Conv", "Gemm")),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="mobilenet_v3_small")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "out" / "int8_sweep")
    args = parser.parse_args(argv)
    onnx = MODELS_DIR / f"{args.net}.onnx"
    contract = PreprocessContract.from_onnx(str(onnx))
    splits = read_manifest(MODELS_DIR / f"{args.net}.manifest.csv", args.data)
    test_x, test_y = g.test_tensors(splits["test"], contract)
    calibration = calibration_tensor(select_calibration(splits["train"], args.calibration_images), contract)
    reference = g.evaluate(onnx, test_x, test_y, contract.labels)
    args.out.mkdir(parents=True, exist_ok=True)
    paths, evals = [onnx], [reference]
    for i, settings in enumerate(CANDIDATES.values()):
        path = quantize_int8(onnx, args.out / f"int8_{i}.onnx", calibration, settings)
        paths.append(path)
        evals.append(g.evaluate(path, test_x, test_y, contract.labels))
    timings = g.time_batches(paths, test_x)
    lines = [
        f"# INT8 settings sweep ({args.net}, {len(test_y)} test images, batch 64, {os.cpu_count()} CPUs, one interleaved run)",
        "",
        "| settings | top-1 | points vs FP32 | agreement | img/s | vs FP32 |",
        "|---|---|---|---|---|---|",
    ]
    names = ["FP32 (committed)", *(f"{k}: {v.describe()}" for k, v in CANDIDATES.items())]
    for name, evaluation, timing in zip(names, evals, timings, strict=True):
        drop = (evaluation.top1 - reference.top1) * 100
        lines.append(
            f"| {name} | {evaluation.top1:.4f} | {drop:+.2f} | {evaluation.agreement(reference.predictions):.4f} | "
            f"{timing.img_s:.0f} | {timing.img_s / timings[0].img_s:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    (REPO_ROOT / "build" / "int8_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
