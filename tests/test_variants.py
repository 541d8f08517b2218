"""Precision variants up to the GPU call: calibration data, ONNX Runtime FP32/INT8/FP16
builds, the accuracy gate, the report, TensorRT/Polygraphy settings and trtexec lines, and
variant installation into a model repository."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from scipy.special import softmax

from wastesort import evaluation as ev
from wastesort.contract import PreprocessContract
from wastesort.data import Sample, scan_image_folder, stratified_split
from wastesort.inference import OnnxClassifier
from wastesort.preprocess import preprocess_bytes
from wastesort.shipped import FROM_SCRATCH_NET, ShippedModel
from wastesort.triton import config as tc
from wastesort.triton.naming import answers_name, ensemble_of, variant_name
from wastesort.variants import gate as g
from wastesort.variants import tensorrt as trt
from wastesort.variants.calibration import ArrayCalibrationReader, calibration_tensor, select_calibration
from wastesort.variants.ort import Int8Settings, convert_fp16, int8_settings, one_more_float_layer, optimize_fp32, pick_int8, quantize_int8
from wastesort.variants.report import VariantRow, write_report
from wastesort.variants.tta import flip_averaged

# the INT8 graph rewrites are checked on the MobileNetV3 model, whose h-swish and squeeze-excite they target
NET = FROM_SCRATCH_NET
ONNX = ShippedModel(NET).onnx


@pytest.fixture(scope="module")
def contract() -> PreprocessContract:
    return PreprocessContract.from_onnx(str(ONNX))


@pytest.fixture(scope="module")
def splits(synthetic_root: Path) -> dict[str, list[Sample]]:
    return stratified_split(scan_image_folder(synthetic_root).samples, seed=0)


@pytest.fixture(scope="module")
def calibration(splits: dict[str, list[Sample]], contract: PreprocessContract) -> np.ndarray:
    return calibration_tensor(select_calibration(splits["train"], 40), contract)


def test_calibration_selection_is_deterministic_and_stratified(splits: dict[str, list[Sample]]) -> None:
    train = splits["train"]
    first, again = select_calibration(train, 60), select_calibration(list(reversed(train)), 60)
    assert [s.sha256 for s in first] == [s.sha256 for s in again]
    assert len(first) == 60 and len({s.sha256 for s in first}) == 60
    assert {s.label for s in first} == {s.label for s in train}
    assert not {s.sha256 for s in first} & {s.sha256 for s in splits["test"]}


def test_calibration_data_is_exactly_the_serving_preprocessing(splits, contract, calibration) -> None:
    chosen = select_calibration(splits["train"], 40)
    expected = np.stack([preprocess_bytes(s.path.read_bytes(), contract) for s in chosen])
    assert calibration.dtype == np.float32 and calibration.shape == (40, 3, contract.height, contract.width)
    np.testing.assert_array_equal(calibration, expected)
    reader = ArrayCalibrationReader("IMAGES", calibration, batch_size=16)
    fed = []
    while (item := reader.get_next()) is not None:
        fed.append(item["IMAGES"])
    assert [len(b) for b in fed] == [16, 16]  # whole batches only; 8 left over
    np.testing.assert_array_equal(np.concatenate(fed), expected[:32])
    settings = trt.PlanSettings("int8", contract.height, contract.width, calibration_batch=20)
    feed = settings.calibration_feed(calibration)
    assert [list(f) for f in feed] == [["IMAGES"], ["IMAGES"]]
    np.testing.assert_array_equal(np.concatenate([f["IMAGES"] for f in feed]), expected)


def _probs(path: Path, x: np.ndarray) -> np.ndarray:
    return OnnxClassifier(path).probabilities(x)


def test_ort_variants_keep_interface_metadata_and_accuracy(tmp_path: Path, contract, calibration) -> None:
    x = calibration[:8]
    reference = _probs(ONNX, x)
    fp32 = optimize_fp32(ONNX, tmp_path / "fp32.onnx")
    int8 = quantize_int8(ONNX, tmp_path / "int8.onnx", calibration, replace(int8_settings(NET), calibration_batch=20))
    fp16 = convert_fp16(ONNX, tmp_path / "fp16.onnx")
    for path in (fp32, int8, fp16):
        model = onnx.load(str(path))
        assert PreprocessContract.from_metadata({p.key: p.value for p in model.metadata_props}) == contract
        assert [i.name for i in model.graph.input] == ["IMAGES"]
        assert [o.name for o in model.graph.output] == ["LOGITS", "PROBABILITIES"]
        assert all(t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for t in [*model.graph.input, *model.graph.output])
    np.testing.assert_allclose(_probs(fp32, x), reference, atol=1e-5)
    np.testing.assert_allclose(_probs(fp16, x), reference, atol=5e-3)
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "GlobalAveragePool"} <= ops and "ReduceMean" not in ops
    producer = {o: n.op_type for n in graph.node for o in n.output}
    # HardSigmoid survives only in the float stem (no DequantizeLinear feeding it)
    assert all(producer.get(n.input[0]) != "DequantizeLinear" for n in graph.node if n.op_type == "HardSigmoid")
    first_quantized = next(i for i, n in enumerate(graph.node) if n.op_type == "QuantizeLinear" and n.input[0] != "IMAGES")
    assert sum(n.op_type == "Conv" for n in graph.node[:first_quantized]) == int8_settings(NET).float_prefix_convs
    assert np.abs(_probs(int8, x) - reference).max() < 0.5  # quantised, not broken
    # the head stays in float: probabilities are the float softmax of the logits, not steps of 1/255
    logits, probabilities = OnnxClassifier(int8).run(["LOGITS", "PROBABILITIES"], x)
    np.testing.assert_allclose(probabilities, softmax(logits, axis=1), atol=1e-6)
    assert {producer[n.input[0]] for n in graph.node if n.op_type == "Softmax"} == {"Gemm"}
    assert int8.stat().st_size < ONNX.stat().st_size / 2
    # the INT8 TTA variant: the QDQ graph itself on the image and its mirror, probabilities averaged
    int8_tta = flip_averaged(int8, tmp_path / "int8_tta.onnx")
    session = OnnxClassifier(int8)
    each = [softmax(session.run(["LOGITS"], v)[0], axis=1) for v in (x, np.ascontiguousarray(x[..., ::-1]))]
    np.testing.assert_allclose(_probs(int8_tta, x), (each[0] + each[1]) / 2, atol=1e-5)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(int8_tta)).graph.node}
    assert PreprocessContract.from_onnx(str(int8_tta)) == contract


def test_int8_settings_describe_themselves() -> None:
    assert int8_settings(FROM_SCRATCH_NET).describe() == (
        "QDQ per-channel UInt8/Int8 Percentile, 99.95 pct, integer HardSigmoid, pool as GlobalAveragePool, first 8 convs in float"
    )
    assert Int8Settings().describe() == "QDQ per-channel UInt8/Int8 MinMax, first conv in float"
    assert "UInt8/Int8 (7-bit) MinMax" in Int8Settings(reduce_range=True).describe()
    plain = Int8Settings(method="Percentile", percentile=99.95, exclude_ops=("Mul",), global_pool=True, float_prefix_convs=0)
    assert plain.describe().endswith("99.95 pct, float Mul, pool as GlobalAveragePool")
    assert "per-tensor" in Int8Settings(per_channel=False).describe()
    assert Int8Settings(qat_weights=True).describe().endswith("first conv in float, QAT weights")
    assert int8_settings("a_net_with_no_choice") == Int8Settings()


def test_gate_refuses_a_drop_beyond_the_threshold() -> None:
    preds = np.zeros(100, int)
    ref = ev.Evaluation(0.90, 0.9, {}, preds)
    assert g.gate(ev.Evaluation(0.895, 0.9, {}, preds), ref, 1.0)[0]
    ok, reason = g.gate(ev.Evaluation(0.885, 0.9, {}, preds), ref, 1.0)
    assert not ok and "1.50 points below" in reason
    assert g.gate(ev.Evaluation(0.885, 0.9, {}, preds), ref, 2.0)[0]
    assert ev.Evaluation(0.9, 0.9, {}, np.array([0, 1, 2, 3])).agreement(np.array([0, 1, 0, 0])) == 0.5


def test_gate_refuses_int8_probabilities_far_from_fp32s() -> None:
    """INT8 variants are also judged on the median difference of their probabilities from
    FP32's (a quantised softmax output moved it past the limit on the real model)."""
    fp32 = np.random.default_rng(0).dirichlet(np.ones(6), size=200).astype(np.float32)
    preds = fp32.argmax(1)
    reference = ev.Evaluation(0.9, 0.9, {}, preds, fp32)
    limit = g.MAX_MEDIAN_PROBABILITY_DIFF
    far = ev.Evaluation(0.9, 0.9, {}, preds, fp32 + 2 * limit)
    near = ev.Evaluation(0.9, 0.9, {}, preds, fp32 + limit / 2)
    ok, reason = g.gate(far, reference, 1.0, probabilities=True)
    assert not ok and "median probability difference from FP32" in reason
    assert g.gate(near, reference, 1.0, probabilities=True)[0]
    assert g.gate(far, reference, 1.0)[0]  # FP16 and FP32 variants are judged on top-1 alone
    assert near.probability_difference(reference) == pytest.approx((limit / 2, limit / 2), rel=1e-3)


def test_evaluate_and_time_on_real_sessions(tmp_path: Path, contract, splits) -> None:
    x = calibration_tensor(splits["test"][:12], contract)
    y = np.array([s.label for s in splits["test"][:12]])
    evaluation = ev.evaluate(ONNX, x, y, contract.labels)
    expected = _probs(ONNX, x).argmax(1)
    np.testing.assert_array_equal(evaluation.predictions, expected)
    assert evaluation.top1 == pytest.approx((expected == y).mean())
    assert set(evaluation.per_class_f1) == set(contract.labels)
    timings = g.time_batches([ONNX, ONNX], x, batch=4, iters=2, warmup=1)
    assert len(timings) == 2 and all(t.median_ms > 0 and t.img_s > 0 and t.batch == 4 for t in timings)


def test_report_has_the_documented_keys(tmp_path: Path) -> None:
    rows = [
        VariantRow("m_onnx_int8", "onnxruntime", "int8", top1=0.8, agreement_with_fp32=0.95, installed=False, reason="REFUSED: x"),
        VariantRow("m_trt_fp16", "tensorrt", "fp16", reason="skipped: no GPU"),
    ]
    write_report(rows, tmp_path / "report.json", tmp_path / "report.md", "t", ["note"])
    data = json.loads((tmp_path / "report.json").read_text())
    assert isinstance(data, list) and len(data) == 2
    for key in ("name", "backend", "precision", "top1", "agreement_with_fp32", "installed", "reason"):
        assert all(key in row for row in data)
    assert data[1]["top1"] is None and data[1]["installed"] is False
    md = (tmp_path / "report.md").read_text()
    assert "| `m_onnx_int8` | onnxruntime | int8 |" in md and "REFUSED" in md


@pytest.mark.parametrize("precision", trt.PRECISIONS)
def test_tensorrt_settings_are_what_the_variant_asks_for(tmp_path: Path, precision: str) -> None:
    settings = trt.PlanSettings(precision, 160, 128, max_batch=64)
    cmd = settings.trtexec_command(Path("m.onnx"), Path("m.plan"), Path("calib.cache"), Path("timing.cache"))
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan"]
    assert "--minShapes=IMAGES:1x3x160x128" in cmd and "--optShapes=IMAGES:32x3x160x128" in cmd and "--maxShapes=IMAGES:64x3x160x128" in cmd
    assert ("--fp16" in cmd) == (precision != "fp32") and ("--int8" in cmd) == (precision == "int8")
    assert ("--calib=calib.cache" in cmd) == (precision == "int8") and "--timingCacheFile=timing.cache" in cmd
    config = settings.polygraphy_config(timing_cache=tmp_path / "timing.cache")
    assert (bool(config.fp16), bool(config.int8)) == (precision != "fp32", precision == "int8")
    (profile,) = config.profiles
    shapes = profile["IMAGES"]
    assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == ((1, 3, 160, 128), (32, 3, 160, 128), (64, 3, 160, 128))


def test_tensorrt_settings_validate_and_skip_reason_is_one_line() -> None:
    with pytest.raises(ValueError):
        trt.PlanSettings("int4", 160, 160)
    with pytest.raises(ValueError):
        trt.PlanSettings("fp16", 160, 160, opt_batch=128, max_batch=64)
    reason = trt.unavailable_reason()
    assert reason is None or ("\n" not in reason and reason)


def test_variants_install_with_their_ensembles(tmp_path: Path, contract) -> None:
    repo = tmp_path / "repo"
    tc.write_repository(repo, ONNX, NET)
    tc.write_variant(repo, NET, variant_name(NET, "onnx_fp16"), ONNX, contract, "onnxruntime", tensorrt_precision="FP16")
    tc.write_variant(repo, NET, variant_name(NET, "trt_int8"), ONNX, contract, "tensorrt")
    cpu = tc.parse_config(repo / variant_name(NET, "onnx_fp16") / "config.pbtxt")
    gpu = tc.parse_config(repo / variant_name(NET, "onnx_fp16") / "configs" / "gpu.pbtxt")
    assert cpu.name == gpu.name == variant_name(NET, "onnx_fp16") and cpu.backend == "python"
    accel = gpu.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    plan = tc.parse_config(repo / variant_name(NET, "trt_int8") / "config.pbtxt")
    assert (plan.platform, plan.default_model_filename) == ("tensorrt_plan", "model.plan")
    assert (repo / variant_name(NET, "trt_int8") / "1" / "model.plan").is_file()
    fp16, trt_int8 = variant_name(NET, "onnx_fp16"), variant_name(NET, "trt_int8")
    # on CPU the ONNX variant's ensemble has two steps; on a GPU (its configs/gpu.pbtxt, and a
    # plan's only config) the answers step counts after the classifier
    for variant, config, steps in (
        (fp16, "config.pbtxt", ["preprocess", fp16]),
        (fp16, "configs/gpu.pbtxt", ["preprocess", fp16, answers_name(fp16)]),
        (trt_int8, "config.pbtxt", ["preprocess", trt_int8, answers_name(trt_int8)]),
    ):
        ens = tc.parse_config(repo / f"ensemble_{variant}" / config)
        assert [s.model_name for s in ens.ensemble_scheduling.step] == steps
        assert (repo / f"ensemble_{variant}" / "labels.txt").read_text().splitlines() == list(contract.labels)
        assert (repo / answers_name(variant) / "config.pbtxt").is_file()
    tc.remove_variant(repo, trt_int8)
    assert not any((repo / name).exists() for name in (trt_int8, ensemble_of(trt_int8), answers_name(trt_int8)))
    assert tc.check_repository(repo, ONNX, NET) == []  # the base models are untouched


def test_the_per_layer_scan_adds_each_still_quantised_layer_once() -> None:
    modules = ["stem", "block0.dw", "block0.pw", "head", "classifier"]
    chosen = Int8Settings(float_prefix_convs=2, float_modules=("head",))
    scan = one_more_float_layer(chosen, modules)
    assert list(scan) == ["block0.pw", "classifier"]
    assert scan["classifier"] == replace(chosen, float_modules=("head", "classifier"))


def test_the_int8_rule_takes_the_lowest_error_among_the_equally_fast() -> None:
    measured = {"plain": (230.0, 0.37), "stem": (213.0, 0.09), "stem+block0": (218.0, 0.02), "u8u8": (20.0, 0.01)}
    assert pick_int8(measured) == "stem+block0"  # u8u8 is the most accurate but ten times slower
    assert pick_int8(measured, band=0.05) == "plain"  # a tighter band leaves only the fastest
    assert pick_int8({"only": (1.0, 9.9)}) == "only"
    with pytest.raises(ValueError, match="no INT8 candidates"):
        pick_int8({})
