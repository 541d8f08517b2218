"""Build, gate and install the precision variants of the committed model (``make build``).

    python build/build.py                         # ONNX Runtime FP32/INT8/FP16, TTA (FP32, INT8) if kept; TensorRT on a GPU
    python build/build.py --variants onnx_int8 --threshold 0.5
    python build/build.py --force                 # install even what the accuracy gate refuses

For each variant: build it from ``models/<net>.onnx``, evaluate it on the test split of the
model's committed manifest (top-1, per-class F1, agreement with FP32), time it side by side
with FP32 (ONNX Runtime on this CPU, same batch, interleaved), and install it into the model
repository as ``<net>_<variant>`` with its ensemble ``ensemble_<net>_<variant>`` if its top-1
is within ``--threshold`` points of FP32 (the INT8 TTA variant: of the FP32 TTA model). INT8 rows also
record how far their probabilities are from their FP32 model's. Then it picks the service's
default among the installed ensembles by the rule of ``wastesort.triton.default`` (val and
test photos together, throughputs from the same interleaved timing) and marks it. Writes
``build/report.md``, ``build/report.json`` and ``build/served_default.json``
and exits 1 if the gate refused a variant (unless ``--force``). TensorRT variants are skipped
with one line saying why when there is no GPU/TensorRT; their ``trtexec`` equivalents are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from wastesort.contract import PreprocessContract
from wastesort.data import DatasetError
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT, shown
from wastesort.perf import machine as mach
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.triton import default as served_default
from wastesort.triton.config import ServingOptions, committed_default, remove_variant, set_default_mark, write_variant
from wastesort.triton.naming import INT8, INT8_TTA, TTA, classifier_name, default_ensembles, ensemble_name, ensemble_of, variant_name
from wastesort.variants import gate as g
from wastesort.variants import tensorrt as trt
from wastesort.variants.calibration import calibration_tensor, select_calibration
from wastesort.variants.ort import convert_fp16, int8_settings, int8_source, optimize_fp32, quantize_int8
from wastesort.variants.report import VariantRow, write_report
from wastesort.variants.tta import flip_averaged

VARIANTS = ("onnx_fp32", INT8, "onnx_fp16", TTA, INT8_TTA, "trt_fp32", "trt_fp16", "trt_int8")
BUILD_DIR = REPO_ROOT / "build"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=DEFAULT_NET, help="committed model under models/ (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="ImageFolder root the manifest's paths are relative to")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--calibration-images", type=int, default=300, help="training images for INT8 calibration (default: %(default)s)")
    parser.add_argument(
        "--threshold", type=float, default=g.DEFAULT_MAX_DROP_POINTS, help="max top-1 points lost vs FP32 (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="install variants the gate refuses, and exit 0")
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=BUILD_DIR / "out", help="built models, caches (default: %(default)s)")
    parser.add_argument("--report", type=Path, default=BUILD_DIR / "report.json")
    parser.add_argument("--bench-batch", type=int, default=64)
    parser.add_argument("--bench-iters", type=int, default=30)
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    return args


def name_installed(rows: list[VariantRow], variant: str, net: str) -> bool:
    """Whether this run installed ``variant`` of ``net`` (its row is in ``rows``)."""
    return any(r.name == variant_name(net, variant) and r.installed for r in rows)


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = ShippedModel(args.net)
    onnx = model.onnx
    if not args.data.is_dir():
        print(f"error: no dataset at {args.data}: calibration and the accuracy gate need the real photos (--data)", file=sys.stderr)
        return 2
    contract = PreprocessContract.from_onnx(str(onnx))
    try:
        splits = {name: model.split(name, args.data) for name in ("train", "val", "test")}
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"test split: {len(splits['test'])} images; calibration: {args.calibration_images} training images; "
        f"threshold {args.threshold} points"
    )
    test_x, test_y = g.test_tensors(splits["test"], contract)
    reference = g.evaluate(onnx, test_x, test_y, contract.labels)
    rows = [
        VariantRow(
            classifier_name(args.net),
            "onnxruntime",
            "fp32",
            f"committed export (served by {ensemble_name(args.net)})",
            str(shown(onnx)),
            round(_size_mb(onnx), 2),
            reference.top1,
            reference.macro_f1,
            reference.per_class_f1,
            1.0,
            installed=True,
            reason="reference",
        )
    ]
    calibration = None
    if any(v.endswith("int8") for v in args.variants):
        calibration = calibration_tensor(select_calibration(splits["train"], args.calibration_images), contract)

    built: list[tuple[VariantRow, Path]] = []
    refused = []
    trt_reason = trt.unavailable_reason()
    int8_built = args.out / f"{variant_name(args.net, INT8)}.onnx"
    evaluations: dict[str, g.Evaluation] = {}  # by variant, for the INT8 TTA gate's reference
    for variant in args.variants:
        name = variant_name(args.net, variant)
        backend, precision = ("onnxruntime" if variant.startswith("onnx") else "tensorrt"), variant.split("_", 1)[1]
        row = VariantRow(name, backend, precision)
        if variant in (TTA, INT8_TTA) and not model.tta_onnx.is_file():
            row.reason = f"skipped: no {model.tta_onnx.name} (make release keeps it only when it beats the plain model on val)"
        elif variant == INT8_TTA and not name_installed(rows, INT8, args.net):
            row.reason = f"skipped: needs {variant_name(args.net, INT8)} built and installed in the same run"
        if row.reason:
            print(f"{name}: {row.reason}")
            remove_variant(args.repository, name)
            rows.append(row)
            continue
        if backend == "tensorrt":
            settings = trt.PlanSettings(precision, contract.height, contract.width, max_batch=ServingOptions.max_batch_size)
            path = args.out / f"{name}.plan"
            row.settings = " ".join(
                settings.trtexec_command(
                    shown(onnx), shown(path), shown(args.out / "trt" / "int8_calibration.cache"), shown(args.out / "trt" / "timing.cache")
                )
            )
            if trt_reason:
                row.reason = f"skipped: {trt_reason}"
                print(f"{name}: {row.reason}\n  equivalent: {row.settings}")
                rows.append(row)
                continue
            start = time.perf_counter()
            record = trt.build_plan(onnx, path, settings, calibration, args.out / "trt")
            row.build_s = time.perf_counter() - start
            row.settings = f"{record['gpu']} (sm {record['compute_capability']}), TensorRT {record['tensorrt']}: {row.settings}"
            evaluation = g.score(trt.probabilities(path, test_x).argmax(1), test_y, contract.labels)
        else:
            path = args.out / f"{name}.onnx"
            start = time.perf_counter()
            if precision == "fp32":
                optimize_fp32(onnx, path)
                row.settings = "ONNX Runtime ORT_ENABLE_EXTENDED graph optimisations, saved"
            elif precision == "tta":  # the committed export as it is: make release also writes it into the repository
                path = model.tta_onnx
                row.settings = "the committed export (models/<net>.tta.onnx): image and its mirror in one graph, probabilities averaged"
            elif variant == INT8_TTA:
                flip_averaged(int8_built, path)
                row.settings = f"the {variant_name(args.net, INT8)} model with its mirror in one graph, probabilities averaged"
            elif precision == "int8":
                int8 = int8_settings(args.net)
                source, note = int8_source(model, int8)
                print(f"{name}: quantising {note}")
                quantize_int8(source, path, calibration, int8)
                row.settings = f"{int8.describe()}, {args.calibration_images} calibration images, {note}"
            else:
                convert_fp16(onnx, path)
                row.settings = "float16 weights/activations, FP32 I/O kept; GPU config adds the TensorRT EP at FP16"
            row.build_s = time.perf_counter() - start
            evaluation = g.evaluate(path, test_x, test_y, contract.labels)
        row.path, row.size_mb = str(shown(path)), round(_size_mb(path), 2)
        row.top1, row.macro_f1, row.per_class_f1 = evaluation.top1, evaluation.macro_f1, evaluation.per_class_f1
        evaluations[variant] = evaluation
        # the INT8 TTA variant is judged against the FP32 TTA model (its FP32 counterpart; the TTA row evaluated that same file)
        fp32 = reference
        if variant == INT8_TTA:
            fp32 = evaluations.get(TTA) or g.evaluate(model.tta_onnx, test_x, test_y, contract.labels)
        row.agreement_with_fp32 = evaluation.agreement(fp32.predictions)
        int8_variant = precision in ("int8", "int8_tta")
        if int8_variant:
            row.probability_diff_median, row.probability_diff_max = evaluation.probability_difference(fp32)
        passed, row.reason = g.gate(evaluation, fp32, args.threshold, probabilities=int8_variant)
        if fp32 is not reference:
            row.reason += f" (FP32 here: {model.tta_onnx.name})"
        if not passed:
            refused.append(name)
        if passed or args.force:
            write_variant(
                args.repository,
                args.net,
                name,
                path,
                contract,
                backend,
                tensorrt_precision="FP16" if variant == "onnx_fp16" else None,
                default=ensemble_of(name) == committed_default(onnx, args.net),  # the committed TTA keeps the release's mark
            )
            row.installed = True
            row.reason += "" if passed else "; installed anyway (--force)"
        else:
            remove_variant(args.repository, name)
            row.reason = "REFUSED: " + row.reason
        print(
            f"{name}: top-1 {row.top1:.4f}, agreement {row.agreement_with_fp32:.4f}, "
            f"{'installed' if row.installed else 'not installed'}: {row.reason}"
        )
        rows.append(row)
        built.append((row, path))

    # CPU timing of the ONNX Runtime variants; FP16 is a GPU variant (CPU timing would mislead),
    # plans are timed by perf/ on the GPU; TTA runs two images per photo (about half the speed)
    timed = [(rows[0], onnx)] + [(r, p) for r, p in built if r.backend == "onnxruntime" and r.precision != "fp16"]
    timings = g.time_batches([p for _, p in timed], test_x, args.bench_batch, args.bench_iters)
    single = g.time_batches([p for _, p in timed], test_x, args.bench_batch, args.bench_iters, threads=1)
    for (row, _), timing, one in zip(timed, timings, single, strict=True):
        row.batch, row.latency_ms, row.img_s = timing.batch, round(timing.median_ms, 2), round(timing.img_s, 1)
        row.speedup_vs_fp32 = round(timing.img_s / timings[0].img_s, 3)
        row.img_s_1_thread = round(one.img_s, 1)
        row.speedup_vs_fp32_1_thread = round(one.img_s / single[0].img_s, 3)
    tested = {rows[0].name: reference, **{variant_name(args.net, v): e for v, e in evaluations.items()}}
    default_note = mark_served_default(args, contract.labels, rows, built, onnx, g.test_tensors(splits["val"], contract), test_y, tested)
    notes = [
        f"Measured by `python build/build.py` on {platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}): "
        f"accuracy on the {len(test_y)} test images of `models/{args.net}.manifest.csv`; throughput with ONNX Runtime on this CPU at "
        f"batch {args.bench_batch}, median of {args.bench_iters} runs, all variants interleaved in one run, "
        "with one intra-op thread per core and again with one thread (the figure per core), worker spin-waiting off as served. "
        "FP16 is not timed on CPU "
        "(ONNX Runtime runs FP16 on the CPU through slow fallbacks; it is a GPU variant).",
        f"Gate: a variant is installed when its top-1 is at most {args.threshold} points below FP32; an INT8 one also when "
        "the median absolute difference of its probabilities from its FP32 model's on the test photos is at most "
        f"{g.MAX_MEDIAN_PROBABILITY_DIFF:g} (the column shows it with the largest).",
        *default_note,
    ]
    write_report(rows, args.report, args.report.with_suffix(".md"), f"Precision variants of {args.net}", notes)
    print(f"report: {args.report.with_suffix('.md')} and {args.report}")
    if refused and not args.force:
        print(f"error: the accuracy gate refused {', '.join(refused)} (use --force to install anyway)", file=sys.stderr)
        return 1
    return 0


def mark_served_default(
    args: argparse.Namespace,
    labels: tuple[str, ...],
    rows: list[VariantRow],
    built: list[tuple[VariantRow, Path]],
    onnx: Path,
    val: tuple[np.ndarray, np.ndarray],
    test_labels: np.ndarray,
    tested: dict[str, g.Evaluation],
) -> list[str]:
    """Apply the served-default rule to the installed ensembles that were timed in this run
    (val evaluated here, test from ``tested``, the build's evaluations by classifier), mark
    the pick when it is one this build installs (the committed ones carry the release's mark),
    write ``served_default.json`` beside the report; returns the report's lines."""
    paths = {rows[0].name: onnx, **{r.name: path for r, path in built if r.installed}}
    speeds = {r.name: r.img_s for r in rows if r.img_s is not None}
    candidates = []
    for ensemble in default_ensembles(args.net):
        classifier = next((c for c in paths if ensemble_of(c) == ensemble and c in speeds), None)
        if classifier is None:
            continue
        right_on_val = int((g.evaluate(paths[classifier], *val, labels).predictions == val[1]).sum())
        correct = right_on_val + int((tested[classifier].predictions == test_labels).sum())
        candidates.append(served_default.Candidate(ensemble, correct, len(val[1]) + len(test_labels), speeds[classifier]))
    candidates.sort(key=lambda c: c.img_s, reverse=True)
    choice, why = served_default.pick(candidates)
    ours = [ensemble_of(variant_name(args.net, v)) for v in (INT8, INT8_TTA)]
    for ensemble in ours:
        if (args.repository / ensemble / "config.pbtxt").is_file():
            set_default_mark(args.repository, ensemble, ensemble == choice.ensemble)
    committed = committed_default(onnx, args.net)
    if choice.ensemble not in ours and choice.ensemble != committed:
        why.append(f"warning: the committed repository marks {committed}; run make repository to mark {choice.ensemble}")
    machine = mach.describe()
    record = {"rule": served_default.__doc__.split("\n\n")[1].replace("\n", " "), "default": choice.ensemble, "steps": why}
    record["measured_on"] = f"{mach.one_line(machine)}; val and test photos of models/{args.net}.manifest.csv, img/s of the report's timing"
    record["candidates"] = [vars(c) for c in candidates]
    (args.report.parent / "served_default.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"served default: {choice.ensemble}")
    for line in why:
        print(f"  {line}")
    return [f"Served default: `{choice.ensemble}` (rule: `wastesort.triton.default`).", *(f"- {line}" for line in why)]


if __name__ == "__main__":
    sys.exit(main())
