"""The figures behind the INT8 defaults: ``quantize_static`` settings and graph rewrites on the
committed model, step by step, each compared with FP32 on the validation split (where the
settings are chosen: logit error and top-1 agreement) and on the test split (what the gate
reports), and all timed side by side with FP32 in one interleaved run.

    python build/int8_sweep.py [--data ../shared/data/trashnet]   # writes build/int8_sweep.md
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from wastesort.contract import PreprocessContract
from wastesort.inference import OnnxClassifier
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.shipped import DEFAULT_NET, LOGITS, ShippedModel
from wastesort.variants import gate as g
from wastesort.variants.calibration import calibration_tensor, select_calibration
from wastesort.variants.ort import Int8Settings, quantize_int8

DEFAULT = Int8Settings()
PLAIN = Int8Settings(percentile=99.999, integer_hard_sigmoid=False, global_pool=False, float_prefix_convs=0)
CANDIDATES = {
    "before: float h-swish": replace(PLAIN, exclude_ops=("HardSigmoid", "Mul")),
    "plain quantize_static, all ops": PLAIN,
    "+ integer HardSigmoid": replace(PLAIN, integer_hard_sigmoid=True),
    "+ pools as GlobalAveragePool": replace(PLAIN, integer_hard_sigmoid=True, global_pool=True),
    "+ stem conv in float": replace(DEFAULT, percentile=99.999, float_prefix_convs=1),
    "+ stem and block 1 in float": replace(DEFAULT, percentile=99.999, float_prefix_convs=5),
    "+ stem and blocks 1-2 in float": replace(DEFAULT, percentile=99.999),
    "percentile 99.99": replace(DEFAULT, percentile=99.99),
    "default (percentile 99.95)": DEFAULT,
    "percentile 99.9": replace(DEFAULT, percentile=99.9),
    "MinMax": replace(DEFAULT, method="MinMax"),
    "default, S8S8": replace(DEFAULT, activation="QInt8"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=DEFAULT_NET, help="committed model under models/ (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "out" / "int8_sweep")
    args = parser.parse_args(argv)
    model = ShippedModel(args.net)
    onnx = model.onnx
    contract = PreprocessContract.from_onnx(str(onnx))
    val_x, _ = g.test_tensors(model.split("val", args.data), contract)
    test_x, test_y = g.test_tensors(model.split("test", args.data), contract)
    calibration = calibration_tensor(select_calibration(model.split("train", args.data), args.calibration_images), contract)
    reference = g.evaluate(onnx, test_x, test_y, contract.labels)
    ref_val = OnnxClassifier(onnx).batched(LOGITS, val_x)
    args.out.mkdir(parents=True, exist_ok=True)
    paths, rows = [onnx], [(reference, 0.0, 1.0)]
    for i, settings in enumerate(CANDIDATES.values()):
        path = quantize_int8(onnx, args.out / f"int8_{i}.onnx", calibration, settings)
        val = OnnxClassifier(path).batched(LOGITS, val_x)
        mse = float(((val - ref_val) ** 2).mean())
        paths.append(path)
        rows.append((g.evaluate(path, test_x, test_y, contract.labels), mse, float((val.argmax(1) == ref_val.argmax(1)).mean())))
    timings = g.time_batches(paths, test_x, iters=args.iters)
    single = g.time_batches(paths, test_x, iters=args.iters, threads=1)
    lines = [
        f"# INT8 settings sweep ({args.net}, batch 64, {os.cpu_count()} CPUs, "
        f"{args.iters} batches each, interleaved, spin-waiting off as served)",
        "",
        f"Chosen on the validation split ({len(val_x)} images: logit MSE and top-1 agreement against FP32); "
        f"reported on the test split ({len(test_y)} images, one image = {100 / len(test_y):.2f} points).",
        "",
        "| settings | val logit MSE | val agreement | test top-1 | points vs FP32 | test agreement "
        "| img/s | vs FP32 | img/s, 1 thread | vs FP32, 1 thread |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = ["FP32 (committed)", *(f"{k}: {v.describe()}" for k, v in CANDIDATES.items())]
    for name, (evaluation, mse, val_agree), timing, one in zip(names, rows, timings, single, strict=True):
        drop = (evaluation.top1 - reference.top1) * 100
        lines.append(
            f"| {name} | {mse:.3f} | {val_agree:.4f} | {evaluation.top1:.4f} | {drop:+.2f} | "
            f"{evaluation.agreement(reference.predictions):.4f} | {timing.img_s:.0f} | {timing.img_s / timings[0].img_s:.2f}x | "
            f"{one.img_s:.0f} | {one.img_s / single[0].img_s:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    (REPO_ROOT / "build" / "int8_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
