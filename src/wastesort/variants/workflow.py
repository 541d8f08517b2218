"""``make build`` as one library call: build each precision variant of the committed model, gate
it against FP32 on the committed test split, time the CPU ones side by side, install the ones
that pass into the model repository, mark the served default, and write the report.

The entry script (``build/build.py``) parses its arguments into :class:`BuildSettings` and calls
:func:`build_variants`; everything else lives here so that tests and other tools can run the
same build without a command line.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wastesort import evaluation as ev
from wastesort.contract import PreprocessContract
from wastesort.data import DatasetError
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT, shown
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.triton import default as served_default
from wastesort.triton.config import ServingOptions, committed_default, remove_variant, set_default_mark, threshold_of, write_variant
from wastesort.triton.naming import INT8, INT8_TTA, TTA, classifier_name, default_ensembles, ensemble_name, ensemble_of, variant_name
from wastesort.variants import gate as g
from wastesort.variants import tensorrt as trt
from wastesort.variants.calibration import calibration_tensor, select_calibration
from wastesort.variants.ort import convert_fp16, int8_settings, int8_source, optimize_fp32, quantize_int8
from wastesort.variants.report import VariantRow, write_report
from wastesort.variants.tta import flip_averaged

VARIANTS = ("onnx_fp32", INT8, "onnx_fp16", TTA, INT8_TTA, "trt_fp32", "trt_fp16", "trt_int8")
#: Where ``make build`` writes its report, the served-default record and (untracked) its models.
BUILD_DIR = REPO_ROOT / "build"


class BuildError(Exception):
    """The build cannot start: no photos, or a split the manifest cannot resolve."""


@dataclass(frozen=True)
class BuildSettings:
    """What ``build/build.py`` exposes as options; the defaults are ``make build``'s."""

    net: str = DEFAULT_NET
    data: Path = DEFAULT_TRASHNET
    variants: tuple[str, ...] = VARIANTS
    calibration_images: int = 300
    threshold: float = g.DEFAULT_MAX_DROP_POINTS
    force: bool = False
    repository: Path = REPO_ROOT / "model_repository"
    out: Path = BUILD_DIR / "out"
    report: Path = BUILD_DIR / "report.json"
    bench_batch: int = 64
    bench_iters: int = 30

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {VARIANTS}")


@dataclass
class BuildResult:
    """Every row of the report (the FP32 reference first), the variants the gate refused and
    the ensemble marked as the served default."""

    rows: list[VariantRow]
    refused: list[str]
    default: str
    report: Path
    notes: list[str] = field(default_factory=list)


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _installed(rows: list[VariantRow], variant: str, net: str) -> bool:
    return any(r.name == variant_name(net, variant) and r.installed for r in rows)


def _reference_row(net: str, onnx: Path, reference: ev.Evaluation) -> VariantRow:
    return VariantRow(
        classifier_name(net), "onnxruntime", "fp32", f"committed export (served by {ensemble_name(net)})", str(shown(onnx)),
        round(_size_mb(onnx), 2), reference.top1, reference.macro_f1, reference.per_class_f1, 1.0, installed=True, reason="reference",
    )  # fmt: skip


def _make_onnx_variant(settings: BuildSettings, model: ShippedModel, variant: str, path: Path, calibration, log) -> tuple[Path, str]:
    """Write one ONNX Runtime variant to ``path`` (the committed TTA file is used as it is);
    returns the file and how it was made."""
    name = variant_name(settings.net, variant)
    if variant == "onnx_fp32":
        optimize_fp32(model.onnx, path)
        return path, "ONNX Runtime ORT_ENABLE_EXTENDED graph optimisations, saved"
    if variant == TTA:  # make release also writes it into the repository
        return model.tta_onnx, "the committed export (models/<net>.tta.onnx): image and its mirror in one graph, probabilities averaged"
    if variant == INT8_TTA:
        flip_averaged(settings.out / f"{variant_name(settings.net, INT8)}.onnx", path)
        return path, f"the {variant_name(settings.net, INT8)} model with its mirror in one graph, probabilities averaged"
    if variant == INT8:
        int8 = int8_settings(settings.net)
        source, note = int8_source(model, int8)
        log(f"{name}: quantising {note}")
        quantize_int8(source, path, calibration, int8)
        return path, f"{int8.describe()}, {settings.calibration_images} calibration images, {note}"
    convert_fp16(model.onnx, path)
    return path, "float16 weights/activations, FP32 I/O kept; GPU config adds the TensorRT EP at FP16"


def build_variants(settings: BuildSettings, log: Callable[[str], None] = print) -> BuildResult:
    """Run the whole build; raises :class:`BuildError` when it cannot start."""
    model = ShippedModel(settings.net)
    onnx = model.onnx
    if not settings.data.is_dir():
        raise BuildError(f"no dataset at {settings.data}: calibration and the accuracy gate need the real photos (--data)")
    contract = PreprocessContract.from_onnx(str(onnx))
    try:
        splits = {name: model.split(name, settings.data) for name in ("train", "val", "test")}
    except DatasetError as exc:
        raise BuildError(str(exc)) from exc
    settings.out.mkdir(parents=True, exist_ok=True)
    log(f"test split: {len(splits['test'])} images; calibration: {settings.calibration_images} training images; "
        f"threshold {settings.threshold} points")  # fmt: skip
    test_x, test_y = ev.split_tensors(splits["test"], contract)
    reference = ev.evaluate(onnx, test_x, test_y, contract.labels)
    rows = [_reference_row(settings.net, onnx, reference)]
    calibration = None
    if any(v.endswith("int8") for v in settings.variants):
        calibration = calibration_tensor(select_calibration(splits["train"], settings.calibration_images), contract)

    built: list[tuple[VariantRow, Path]] = []
    refused: list[str] = []
    trt_reason = trt.unavailable_reason()
    evaluations: dict[str, ev.Evaluation] = {}  # by variant, for the INT8 TTA gate's reference
    for variant in settings.variants:
        name = variant_name(settings.net, variant)
        backend, precision = ("onnxruntime" if variant.startswith("onnx") else "tensorrt"), variant.split("_", 1)[1]
        row = VariantRow(name, backend, precision)
        if variant in (TTA, INT8_TTA) and not model.tta_onnx.is_file():
            row.reason = f"skipped: no {model.tta_onnx.name} (make release keeps it only when it beats the plain model on val)"
        elif variant == INT8_TTA and not _installed(rows, INT8, settings.net):
            row.reason = f"skipped: needs {variant_name(settings.net, INT8)} built and installed in the same run"
        if row.reason:
            log(f"{name}: {row.reason}")
            remove_variant(settings.repository, name)
            rows.append(row)
            continue
        start = time.perf_counter()
        if backend == "tensorrt":
            plan = trt.PlanSettings(precision, contract.height, contract.width, max_batch=ServingOptions.max_batch_size)
            path = settings.out / f"{name}.plan"
            caches = (shown(settings.out / "trt" / "int8_calibration.cache"), shown(settings.out / "trt" / "timing.cache"))
            row.settings = " ".join(plan.trtexec_command(shown(onnx), shown(path), *caches))
            if trt_reason:
                row.reason = f"skipped: {trt_reason}"
                log(f"{name}: {row.reason}\n  equivalent: {row.settings}")
                rows.append(row)
                continue
            record = trt.build_plan(onnx, path, plan, calibration, settings.out / "trt")
            row.build_s = time.perf_counter() - start
            row.settings = f"{record['gpu']} (sm {record['compute_capability']}), TensorRT {record['tensorrt']}: {row.settings}"
            evaluation = ev.score(trt.probabilities(path, test_x).argmax(1), test_y, contract.labels)
        else:
            path, row.settings = _make_onnx_variant(settings, model, variant, settings.out / f"{name}.onnx", calibration, log)
            row.build_s = time.perf_counter() - start
            evaluation = ev.evaluate(path, test_x, test_y, contract.labels)
        row.path, row.size_mb = str(shown(path)), round(_size_mb(path), 2)
        row.top1, row.macro_f1, row.per_class_f1 = evaluation.top1, evaluation.macro_f1, evaluation.per_class_f1
        evaluations[variant] = evaluation
        # the INT8 TTA variant is judged against the FP32 TTA model (the TTA row evaluated that same file)
        fp32 = reference
        if variant == INT8_TTA:
            fp32 = evaluations.get(TTA) or ev.evaluate(model.tta_onnx, test_x, test_y, contract.labels)
        row.agreement_with_fp32 = evaluation.agreement(fp32.predictions)
        int8_variant = precision in ("int8", "int8_tta")
        if int8_variant:
            row.probability_diff_median, row.probability_diff_max = evaluation.probability_difference(fp32)
        passed, row.reason = g.gate(evaluation, fp32, settings.threshold, probabilities=int8_variant)
        if fp32 is not reference:
            row.reason += f" (FP32 here: {model.tta_onnx.name})"
        if not passed:
            refused.append(name)
        if passed or settings.force:
            write_variant(
                settings.repository, settings.net, name, path, contract, backend,
                tensorrt_precision="FP16" if variant == "onnx_fp16" else None,
                default=ensemble_of(name) == committed_default(onnx, settings.net),  # the committed TTA keeps the release's mark
                threshold=threshold_of(model.tta_onnx if variant in (TTA, INT8_TTA) else onnx),  # its FP32 counterpart's
            )  # fmt: skip
            row.installed = True
            row.reason += "" if passed else "; installed anyway (--force)"
        else:
            remove_variant(settings.repository, name)
            row.reason = "REFUSED: " + row.reason
        log(f"{name}: top-1 {row.top1:.4f}, agreement {row.agreement_with_fp32:.4f}, "
            f"{'installed' if row.installed else 'not installed'}: {row.reason}")  # fmt: skip
        rows.append(row)
        built.append((row, path))

    _time_variants(settings, rows[0], onnx, built, test_x)
    tested = {rows[0].name: reference, **{variant_name(settings.net, v): e for v, e in evaluations.items()}}
    val = ev.split_tensors(splits["val"], contract)
    default, default_note = mark_served_default(settings, contract.labels, rows, built, onnx, val, test_y, tested, log)
    notes = [
        f"Measured by `python build/build.py` on {platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}): "
        f"accuracy on the {len(test_y)} test images of `models/{settings.net}.manifest.csv`; throughput with ONNX Runtime on this CPU at "
        f"batch {settings.bench_batch}, median of {settings.bench_iters} runs, all variants interleaved in one run, "
        "with one intra-op thread per core and again with one thread (the figure per core), worker spin-waiting off as served. "
        "FP16 is not timed on CPU (ONNX Runtime runs FP16 on the CPU through slow fallbacks; it is a GPU variant).",
        f"Gate: a variant is installed when its top-1 is at most {settings.threshold} points below FP32; an INT8 one also when "
        "the median absolute difference of its probabilities from its FP32 model's on the test photos is at most "
        f"{g.MAX_MEDIAN_PROBABILITY_DIFF:g} (the column shows it with the largest).",
        *default_note,
    ]
    write_report(rows, settings.report, settings.report.with_suffix(".md"), f"Precision variants of {settings.net}", notes)
    return BuildResult(rows, refused, default, settings.report, notes)


def _time_variants(settings: BuildSettings, reference: VariantRow, onnx: Path, built: list[tuple[VariantRow, Path]], test_x) -> None:
    """CPU timing of the ONNX Runtime variants, interleaved with FP32, with all cores and with
    one thread. FP16 is a GPU variant (CPU timing would mislead); plans are timed by ``perf/``."""
    timed = [(reference, onnx)] + [(r, p) for r, p in built if r.backend == "onnxruntime" and r.precision != "fp16"]
    timings = g.time_batches([p for _, p in timed], test_x, settings.bench_batch, settings.bench_iters)
    single = g.time_batches([p for _, p in timed], test_x, settings.bench_batch, settings.bench_iters, threads=1)
    for (row, _), timing, one in zip(timed, timings, single, strict=True):
        row.batch, row.latency_ms, row.img_s = timing.batch, round(timing.median_ms, 2), round(timing.img_s, 1)
        row.speedup_vs_fp32 = round(timing.img_s / timings[0].img_s, 3)
        row.img_s_1_thread = round(one.img_s, 1)
        row.speedup_vs_fp32_1_thread = round(one.img_s / single[0].img_s, 3)


def mark_served_default(
    settings: BuildSettings,
    labels: tuple[str, ...],
    rows: list[VariantRow],
    built: list[tuple[VariantRow, Path]],
    onnx: Path,
    val: tuple[np.ndarray, np.ndarray],
    test_labels: np.ndarray,
    tested: dict[str, ev.Evaluation],
    log: Callable[[str], None] = print,
) -> tuple[str, list[str]]:
    """Apply the served-default rule to the installed ensembles timed in this run (val evaluated
    here, test from ``tested``), mark the pick when this build installs it (the committed ones
    carry the release's mark), and write ``served_default.json`` beside the report; returns the
    pick and the report's lines."""
    paths = {rows[0].name: onnx, **{r.name: path for r, path in built if r.installed}}
    speeds = {r.name: r.img_s for r in rows if r.img_s is not None}
    candidates = []
    for ensemble in default_ensembles(settings.net):
        classifier = next((c for c in paths if ensemble_of(c) == ensemble and c in speeds), None)
        if classifier is None:
            continue
        right_on_val = int((ev.evaluate(paths[classifier], *val, labels).predictions == val[1]).sum())
        correct = right_on_val + int((tested[classifier].predictions == test_labels).sum())
        candidates.append(served_default.Candidate(ensemble, correct, len(val[1]) + len(test_labels), speeds[classifier]))
    candidates.sort(key=lambda c: c.img_s, reverse=True)
    choice, why = served_default.pick(candidates)
    ours = [ensemble_of(variant_name(settings.net, v)) for v in (INT8, INT8_TTA)]
    for ensemble in ours:
        if (settings.repository / ensemble / "config.pbtxt").is_file():
            set_default_mark(settings.repository, ensemble, ensemble == choice.ensemble)
    committed = committed_default(onnx, settings.net)
    if choice.ensemble not in ours and choice.ensemble != committed:
        why.append(f"warning: the committed repository marks {committed}; run make repository to mark {choice.ensemble}")
    record = {"rule": served_default.__doc__.split("\n\n")[1].replace("\n", " "), "default": choice.ensemble, "steps": why}
    photos = f"val and test photos of models/{settings.net}.manifest.csv"
    record["measured_on"] = f"{one_line(describe())}; {photos}, img/s of the report's timing"
    record["candidates"] = [vars(c) for c in candidates]
    (settings.report.parent / "served_default.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"served default: {choice.ensemble}")
    for line in why:
        log(f"  {line}")
    return choice.ensemble, [f"Served default: `{choice.ensemble}` (rule: `wastesort.triton.default`).", *(f"- {line}" for line in why)]
