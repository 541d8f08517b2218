"""The figures behind the INT8 defaults: ``quantize_static`` settings and graph rewrites on the
committed model, step by step, each compared with FP32 on the validation split (where the
settings are chosen: logit error and top-1 agreement) and on the test split (what the gate
reports), and all timed side by side with FP32 in one interleaved run.

    python experiments/int8_settings/int8_sweep.py [--net NET] [--data ../shared/data/trashnet]   # writes build/int8_sweep_<net>.md
    python experiments/int8_settings/int8_sweep.py --per-layer    # each layer in float on its own: build/int8_layers_<net>.md
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import onnx

from wastesort import evaluation as ev
from wastesort.contract import PreprocessContract
from wastesort.inference import OnnxClassifier
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.shipped import DEFAULT_NET, FROM_SCRATCH_NET, LOGITS, ShippedModel
from wastesort.variants import gate as g
from wastesort.variants import int8_graph
from wastesort.variants.calibration import calibration_tensor, select_calibration
from wastesort.variants.ort import (
    EFFICIENTNET_LITE0_INT8,
    INT8_SPEED_BAND,
    MOBILENET_V3_INT8,
    Int8Settings,
    int8_settings,
    int8_source,
    layer_label,
    one_more_float_layer,
    pick_int8,
    quantize_int8,
)

MOBILENET = MOBILENET_V3_INT8
MOBILENET_PLAIN = Int8Settings(method="Percentile", percentile=99.999)
#: MobileNetV3-Small: the rewrites one at a time, then the calibration.
MOBILENET_CANDIDATES = {
    "before: float h-swish": replace(MOBILENET_PLAIN, exclude_ops=("HardSigmoid", "Mul")),
    "plain quantize_static, all ops": MOBILENET_PLAIN,
    "+ integer HardSigmoid": replace(MOBILENET_PLAIN, integer_hard_sigmoid=True),
    "+ pools as GlobalAveragePool": replace(MOBILENET_PLAIN, integer_hard_sigmoid=True, global_pool=True),
    "+ stem conv in float": replace(MOBILENET, percentile=99.999, float_prefix_convs=1),
    "+ stem and block 1 in float": replace(MOBILENET, percentile=99.999, float_prefix_convs=5),
    "+ stem and blocks 1-2 in float": replace(MOBILENET, percentile=99.999),
    "percentile 99.99": replace(MOBILENET, percentile=99.99),
    "chosen (percentile 99.95)": MOBILENET,
    "percentile 99.9": replace(MOBILENET, percentile=99.9),
    "MinMax": replace(MOBILENET, method="MinMax"),
    "chosen, S8S8": replace(MOBILENET, activation="QInt8"),
}
PLAIN = Int8Settings(float_prefix_convs=0)
#: Conv + ReLU6 networks (EfficientNet-Lite): is any MobileNet rewrite still worth it, and
#: which calibration keeps the accuracy.
LITE_CANDIDATES = {
    "plain quantize_static (MinMax)": PLAIN,
    "+ pool as GlobalAveragePool": replace(PLAIN, global_pool=True),
    "+ stem conv in float": Int8Settings(),
    "+ stem and block 0 in float": Int8Settings(float_prefix_convs=3),
    "stem, block 0 and blocks.1.0 in float": Int8Settings(float_prefix_convs=6),
    "stem and block 0 in float, percentile 99.999": replace(EFFICIENTNET_LITE0_INT8, qat_weights=False),
    "stem and block 0 in float, QAT weights (make qat)": replace(EFFICIENTNET_LITE0_INT8, method="MinMax", qat_weights=True),
    "stem and block 0 in float, percentile 99.999, QAT weights (make qat)": replace(EFFICIENTNET_LITE0_INT8, qat_weights=True),
    "stem in float, S8S8 (signed activations)": Int8Settings(activation="QInt8"),
    "stem in float, U8U8": Int8Settings(weight="QUInt8"),
    "Entropy": replace(PLAIN, method="Entropy"),
    "percentile 99.999": replace(PLAIN, method="Percentile", percentile=99.999),
    "percentile 99.99": replace(PLAIN, method="Percentile", percentile=99.99),
    "percentile 99.9": replace(PLAIN, method="Percentile", percentile=99.9),
    "per-tensor weights": replace(PLAIN, per_channel=False),
    "U8U8 (unsigned weights)": replace(PLAIN, weight="QUInt8"),
    "7-bit weights (reduce_range)": replace(PLAIN, reduce_range=True),
    "7-bit weights, stem conv in float": replace(Int8Settings(), reduce_range=True),
    "MobileNetV3's settings": MOBILENET,
}


def candidates(net: str) -> dict[str, Int8Settings]:
    """The settings compared for ``net``, its chosen ones included."""
    rows = MOBILENET_CANDIDATES if net == FROM_SCRATCH_NET else LITE_CANDIDATES
    chosen = int8_settings(net)
    return rows if chosen in rows.values() else {**rows, "chosen": chosen}


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def per_layer(net: str, chosen: Int8Settings, onnx_path: Path) -> dict[str, Int8Settings]:
    """The chosen settings, then each of the network's other quantised layers kept in float on
    its own on top of them: which layers carry the INT8 error."""
    modules = int8_graph.weighted_modules(onnx.load(str(onnx_path)))
    return {f"chosen ({net})": chosen, **{f"+ {layer_label(m)}": s for m, s in one_more_float_layer(chosen, modules).items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=DEFAULT_NET, help="committed model under models/ (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--per-layer", action="store_true", help="keep each layer in float on its own (accuracy only, no timing)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "out" / "int8_sweep")
    args = parser.parse_args(argv)
    model = ShippedModel(args.net)
    onnx_path = model.onnx
    contract = PreprocessContract.from_onnx(str(onnx_path))
    val_x, _ = ev.split_tensors(model.split("val", args.data), contract)
    test_x, test_y = ev.split_tensors(model.split("test", args.data), contract)
    calibration = calibration_tensor(select_calibration(model.split("train", args.data), args.calibration_images), contract)
    reference = ev.evaluate(onnx_path, test_x, test_y, contract.labels)
    ref_val = OnnxClassifier(onnx_path).batched(LOGITS, val_x)
    args.out.mkdir(parents=True, exist_ok=True)
    paths, rows = [onnx_path], [(reference, 0.0, 1.0)]
    chosen = int8_settings(args.net)
    compared = per_layer(args.net, chosen, onnx_path) if args.per_layer else candidates(args.net)
    names = ["FP32 (committed)"]
    for i, (key, settings) in enumerate(compared.items()):
        source, note = int8_source(model, settings)
        fallback = f" [{note}]" if settings.qat_weights and source == onnx_path else ""
        names.append(_bold(f"{key}: {settings.describe()}{fallback}", settings == chosen))
        path = quantize_int8(source, args.out / f"int8_{i}.onnx", calibration, settings)
        val = OnnxClassifier(path).batched(LOGITS, val_x)
        mse = float(((val - ref_val) ** 2).mean())
        paths.append(path)
        rows.append((ev.evaluate(path, test_x, test_y, contract.labels), mse, float((val.argmax(1) == ref_val.argmax(1)).mean())))
    if args.per_layer:
        _write(args.net, "layers", per_layer_table(args.net, names, rows, reference, len(val_x), len(test_y)))
        return
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
    for name, (evaluation, mse, val_agree), timing, one in zip(names, rows, timings, single, strict=True):
        drop = (evaluation.top1 - reference.top1) * 100
        lines.append(
            f"| {name} | {mse:.3f} | {val_agree:.4f} | {evaluation.top1:.4f} | {drop:+.2f} | "
            f"{evaluation.agreement(reference.predictions):.4f} | {timing.img_s:.0f} | {timing.img_s / timings[0].img_s:.2f}x | "
            f"{one.img_s:.0f} | {one.img_s / single[0].img_s:.2f}x |"
        )
    lines += ["", rule_verdict(compared, chosen, [t.img_s for t in timings[1:]], [mse for _, mse, _ in rows[1:]])]
    _write(args.net, "sweep", "\n".join(lines) + "\n")


def rule_verdict(compared: dict[str, Int8Settings], chosen: Int8Settings, img_s: list[float], mse: list[float]) -> str:
    """What :func:`~wastesort.variants.ort.pick_int8` picks from this run, and whether that is what
    ``make build`` uses (the bold row)."""
    pick = pick_int8({name: (speed, err) for name, speed, err in zip(compared, img_s, mse, strict=True)})
    rule = f"Rule (lowest val logit MSE among the settings within {INT8_SPEED_BAND:.0%} of the fastest INT8 row, 2 threads): **{pick}**"
    if compared[pick] == chosen:
        return f"{rule}, the settings `make build` uses."
    return f"{rule}, not the settings `make build` uses ({chosen.describe()}): update `INT8_BY_NET`."


def per_layer_table(net: str, names: list[str], rows: list, reference: ev.Evaluation, n_val: int, n_test: int) -> str:
    """Markdown table of a ``--per-layer`` run: accuracy against FP32 only."""
    lines = [
        f"# INT8 per-layer sensitivity ({net}): the chosen settings, then one more layer in float",
        "",
        f"Validation split {n_val} images (logit MSE and top-1 agreement against FP32), test split {n_test} images "
        f"(one image = {100 / n_test:.2f} points).",
        "",
        "| settings | val logit MSE | val agreement | test top-1 | points vs FP32 |",
        "|---|---|---|---|---|",
    ]
    for name, (evaluation, mse, val_agree) in zip(names, rows, strict=True):
        lines.append(f"| {name} | {mse:.3f} | {val_agree:.4f} | {evaluation.top1:.4f} | {(evaluation.top1 - reference.top1) * 100:+.2f} |")
    return "\n".join(lines) + "\n"


def _write(net: str, kind: str, text: str) -> None:
    (REPO_ROOT / "build" / f"int8_{kind}_{net}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
