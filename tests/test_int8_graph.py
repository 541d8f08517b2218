"""The INT8 graph rewrites (``wastesort.variants.int8_graph``) on a small MobileNetV3-shaped
model: h-swish, a squeeze-excite gate and spatial mean pools. Each rewrite must keep the
numbers (float pools exactly; the integer HardSigmoid within one step of its uint8 output) and
must make ONNX Runtime run the island as integer kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from wastesort.variants import int8_graph as ig
from wastesort.variants.calibration import ArrayCalibrationReader
from wastesort.variants.ort import Int8Settings, quantize_int8

ALPHA = 1.0 / 6.0
RNG = np.random.default_rng(0)


def _model(keepdims: int = 1) -> onnx.ModelProto:
    """X (N,3,16,16) -> Conv -> h-swish -> squeeze-excite (mean pool, 1x1 conv, HardSigmoid, Mul)
    -> 1x1 conv -> mean pool -> Y (N,4)."""
    w = {
        "W1": RNG.normal(0, 0.5, (8, 3, 3, 3)),
        "B1": RNG.normal(0, 0.5, 8),
        "W2": RNG.normal(0, 0.5, (8, 8, 1, 1)),
        "W3": RNG.normal(0, 0.5, (4, 8, 1, 1)),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.array([-1, -2], np.int64), "SPATIAL"))
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "FLAT"))
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["A"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("HardSigmoid", ["A"], ["H"], alpha=ALPHA, beta=0.5, name="hsig1"),
        helper.make_node("Mul", ["A", "H"], ["S"], name="hswish1"),
        helper.make_node("ReduceMean", ["S", "SPATIAL"], ["P"], keepdims=1, name="pool1"),
        helper.make_node("Conv", ["P", "W2"], ["G"], name="conv2"),
        helper.make_node("HardSigmoid", ["G"], ["HG"], alpha=ALPHA, beta=0.5, name="gate"),
        helper.make_node("Mul", ["S", "HG"], ["E"], name="excite"),
        helper.make_node("Conv", ["E", "W3"], ["Z"], name="conv3"),
        helper.make_node("ReduceMean", ["Z", "SPATIAL"], ["M"], keepdims=keepdims, name="pool2"),
        helper.make_node("Reshape", ["M", "FLAT"], ["Y"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mobilenet",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


X = RNG.normal(0, 1, (16, 3, 16, 16)).astype(np.float32)


def _run(model: onnx.ModelProto | Path, x: np.ndarray, outputs: list[str] | None = None, optimize: bool = False) -> list[np.ndarray]:
    proto = onnx.load(str(model)) if isinstance(model, Path) else model
    if outputs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        known = {o.name for o in proto.graph.output}
        proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in outputs if n not in known)
    options = ort.SessionOptions()
    if not optimize:  # the QDQ graph's own arithmetic, without ONNX Runtime's integer fusions
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs or ["Y"], {"X": x})


def _quantize(tmp_path: Path, model: onnx.ModelProto, activation: QuantType = QuantType.QUInt8) -> onnx.ModelProto:
    src, dst = tmp_path / "float.onnx", tmp_path / f"qdq_{activation.name}.onnx"
    onnx.save(model, str(src))
    quantize_static(
        str(src),
        str(dst),
        ArrayCalibrationReader("X", X, 8),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return onnx.load(str(dst))


def _optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> set[str]:
    """Op types of the graph ONNX Runtime actually runs on the CPU."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}


def test_spatial_reduce_mean_becomes_an_identical_global_pool() -> None:
    model = _model()
    expected = _run(model, X)[0]
    assert ig.reduce_mean_as_global_pool(model) == 2
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceMean" not in ops and ops.count("GlobalAveragePool") == 2
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, X)[0], expected, rtol=1e-6, atol=1e-6)


def test_reduce_mean_that_is_not_a_spatial_pool_is_left_alone() -> None:
    dropped = _model(keepdims=0)  # keepdims=0 changes the output rank: not a GlobalAveragePool
    assert ig.reduce_mean_as_global_pool(dropped) == 1
    assert [n.name for n in dropped.graph.node if n.op_type == "ReduceMean"] == ["pool2"]


def test_float_prefix_ends_at_the_requested_convolution() -> None:
    model = _model()
    assert ig.float_prefix(model, 0) == []
    assert ig.float_prefix(model, 1) == ["conv1"]
    assert ig.float_prefix(model, 2) == ["conv1", "hsig1", "hswish1", "pool1", "conv2"]
    with pytest.raises(ValueError, match="only 3 Conv"):
        ig.float_prefix(model, 4)


def test_float_head_starts_at_the_last_weighted_layer() -> None:
    model = _model()
    assert ig.float_head(model) == ["conv3", "pool2", "flatten"]
    model.graph.node.append(helper.make_node("Gemm", ["Y", "WG"], ["L"], name="classifier"))
    model.graph.node.append(helper.make_node("Softmax", ["L"], ["P"], name="softmax"))
    assert ig.float_head(model) == ["classifier", "softmax"]
    del model.graph.node[:]
    with pytest.raises(ValueError, match="no Conv, Gemm or MatMul"):
        ig.float_head(model)


def test_name_nodes_names_only_the_unnamed_and_keeps_names_unique() -> None:
    model = _model()
    model.graph.node[1].name = ""
    model.graph.node[2].name = "HardSigmoid_1"  # the name the rule would pick for node 1
    ig.name_nodes(model)
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names) and names[0] == "conv1" and names[1].startswith("HardSigmoid_1")


@pytest.mark.parametrize("activation", [QuantType.QUInt8, QuantType.QInt8])
def test_integer_hard_sigmoid_is_hard_sigmoid_within_one_step(tmp_path: Path, activation: QuantType) -> None:
    qdq = _quantize(tmp_path, _model(), activation)
    rewritten = onnx.ModelProto.FromString(qdq.SerializeToString())
    assert ig.hard_sigmoid_as_requantize(rewritten) == 2
    onnx.checker.check_model(rewritten)
    assert "HardSigmoid" not in {n.op_type for n in rewritten.graph.node}
    for x_name, h_name in (("A", "H"), ("G", "HG")):
        x_dq = f"{x_name}_DequantizeLinear_Output"
        h_dq = f"{h_name}_DequantizeLinear_Output"
        x, h = _run(rewritten, X, [x_dq, h_dq])
        exact = np.clip(ALPHA * x + 0.5, 0.0, 1.0)
        step = 0.5 / 127
        assert np.abs(h - exact).max() <= step + 1e-6  # half a step of rounding, at most one at the upper clip
        assert h.min() >= -step - 1e-6 and h.max() <= 1 + step + 1e-6
    before, after = _run(qdq, X)[0], _run(rewritten, X)[0]
    spread = np.abs(before).max()
    assert np.abs(after - before).max() < 0.05 * spread  # same network, not merely the same shapes


def test_integer_hard_sigmoid_makes_onnx_runtime_run_integer_kernels(tmp_path: Path) -> None:
    qdq = _quantize(tmp_path, _model())
    assert "HardSigmoid" in _optimized_ops(qdq, tmp_path)  # the control: plain QDQ drops to float
    rewritten = onnx.ModelProto.FromString(qdq.SerializeToString())
    ig.hard_sigmoid_as_requantize(rewritten)
    ops = _optimized_ops(rewritten, tmp_path)
    assert "HardSigmoid" not in ops and "QLinearMul" in ops


def test_islands_that_cannot_be_requantized_are_left_alone(tmp_path: Path) -> None:
    model = _model()
    for node in model.graph.node:
        if node.name == "gate":
            node.attribute[1].f = 0.25  # beta 0.25: not 127 steps of 1/254
    qdq = _quantize(tmp_path, model)
    assert ig.hard_sigmoid_as_requantize(qdq) == 1
    assert [n.name for n in qdq.graph.node if n.op_type == "HardSigmoid"] == ["gate"]
    float_model = _model()
    assert ig.hard_sigmoid_as_requantize(float_model) == 0  # no Q/DQ around it: nothing to do


def _module_named(model: onnx.ModelProto) -> onnx.ModelProto:
    """The tiny model with its weights named as an exported PyTorch module names them."""
    names = {"W1": "stem.weight", "W2": "gate.weight", "W3": "head.weight"}
    for init in model.graph.initializer:
        init.name = names.get(init.name, init.name)
    for node in model.graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
    return model


def test_layers_are_found_by_the_module_that_owns_their_weight() -> None:
    model = _module_named(_model())
    assert ig.weighted_modules(model) == ["stem", "gate", "head"]
    assert ig.reading_weights(model, ["head.weight", "stem.weight"]) == ["conv1", "conv3"]
    with pytest.raises(ValueError, match="no node reads"):
        ig.reading_weights(model, ["hed.weight"])
    with pytest.raises(ValueError, match=r"cannot be named by module: \['conv1', 'conv2', 'conv3'\]"):
        ig.weighted_modules(_model())  # weights named W1..W3: not one layer could be named


def test_a_module_named_to_stay_in_float_keeps_its_float_weight(tmp_path: Path) -> None:
    src = tmp_path / "float.onnx"
    onnx.save(_module_named(_model()), str(src))
    settings = Int8Settings(float_prefix_convs=0, float_modules=("head",), calibration_batch=8)
    graph = onnx.load(str(quantize_int8(src, tmp_path / "int8.onnx", X, settings))).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    weight_source = {n.name: producer.get(n.input[1], "initializer") for n in graph.node if n.op_type == "Conv"}
    assert weight_source == {"conv1": "DequantizeLinear", "conv2": "DequantizeLinear", "conv3": "initializer"}
    assert "head.weight" in {i.name for i in graph.initializer}
    assert settings.describe().endswith("head in float")
