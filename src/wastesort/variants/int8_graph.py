"""Graph rewrites that let ONNX Runtime's CPU kernels run a MobileNetV3 QDQ model in INT8
end to end, instead of dropping to float around every h-swish and squeeze-excite pool.

ONNX Runtime fuses ``DequantizeLinear -> op -> QuantizeLinear`` into an integer kernel only for
the ops it has one for (``QLinearConv``, ``QLinearMul``, ``QLinearAdd``,
``QLinearGlobalAveragePool``, ...). Two ops of MobileNetV3 have none, so a plain
``quantize_static`` model converts the whole activation tensor to float and back around them:

- ``HardSigmoid`` (inside every h-swish, ``x * HardSigmoid(x)``, and every squeeze-excite gate):
  :func:`hard_sigmoid_as_requantize` turns it into one ``QLinearMul`` by a constant, with the
  clip to ``[0, 1]`` done by the saturation of the output's uint8 range.
- ``ReduceMean`` over the spatial axes (the squeeze-excite pool and the final pool):
  :func:`reduce_mean_as_global_pool` makes it the equivalent ``GlobalAveragePool``.

:func:`float_prefix` names the first nodes of the graph, which the build keeps in float: the
high-resolution stem is as fast in ONNX Runtime's float (NCHWc) kernels as in INT8, and ending
INT8 there costs layout transposes and Q/DQ passes over the largest tensors of the network.
Figures: ``build/int8_sweep.md``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization.onnx_model import ONNXModel

#: ``HardSigmoid``'s ``beta`` the requantisation supports: 0.5 is 127 steps of the output scale.
_BETA = 0.5
_STEPS = 127


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (``<op>_<index>``), so it can be excluded from
    quantisation by name; ONNX Runtime's pre-processing leaves inlined function bodies unnamed."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def reduce_mean_as_global_pool(model: onnx.ModelProto) -> int:
    """Replace ``ReduceMean`` over the two spatial axes of a 4-D tensor with ``keepdims=1`` by the
    identical ``GlobalAveragePool``; returns how many were replaced. Handles ``axes`` given as
    an attribute (opset < 18) or as a constant input (opset >= 18)."""
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    replaced = 0
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("keepdims", 1) != 1:
            continue
        if len(node.input) > 1 and node.input[1]:
            if node.input[1] not in constants:
                continue
            axes = constants[node.input[1]].tolist()
        else:
            axes = list(attrs.get("axes", []))
        if sorted(a % 4 for a in axes) != [2, 3]:
            continue
        pool = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=f"{node.name}_as_global_pool")
        graph.node.remove(node)
        graph.node.insert(index, pool)
        replaced += 1
    return replaced


def float_prefix(model: onnx.ModelProto, convolutions: int) -> list[str]:
    """Names of the nodes from the start of the (topologically sorted) graph up to and including
    its ``convolutions``-th ``Conv``; empty for 0."""
    if convolutions <= 0:
        return []
    names, seen = [], 0
    for node in model.graph.node:
        names.append(node.name)
        if node.op_type == "Conv":
            seen += 1
            if seen == convolutions:
                return names
    raise ValueError(f"the model has only {seen} Conv nodes, fewer than the {convolutions} asked to stay in float")


def float_head(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from the last weighted layer (``Conv``, ``Gemm`` or ``MatMul``: the
    one that computes the logits) to the end, which the build keeps in float: a few thousand
    multiplications per image, and a quantised softmax gives probabilities in steps of 1/255."""
    nodes = list(model.graph.node)
    weighted = [i for i, n in enumerate(nodes) if n.op_type in ("Conv", "Gemm", "MatMul")]
    if not weighted:
        raise ValueError("the model has no Conv, Gemm or MatMul node, so no classifier layer to keep in float")
    return [n.name for n in nodes[weighted[-1] :]]


def weighted_modules(model: onnx.ModelProto) -> list[str]:
    """The modules of the ``Conv`` and ``Gemm`` nodes in graph order, named as their weight
    initialiser (``<module>.weight``) names them. Every such node must have one: the list lines
    up with the graph's convolutions (``Int8Settings.float_prefix_convs`` counts them), so a
    node left out would shift every name after it. Raises ``ValueError`` naming the nodes whose
    weight is not a ``<module>.weight`` initialiser (for example one folded into ``onnx::Conv_*``)."""
    weights = {i.name for i in model.graph.initializer}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    unnamed = [n.name for n in layers if len(n.input) < 2 or n.input[1] not in weights or not n.input[1].endswith(".weight")]
    if unnamed:
        raise ValueError(f"layers without a <module>.weight initialiser, which cannot be named by module: {unnamed}")
    return [n.input[1].removesuffix(".weight") for n in layers]


def reading_weights(model: onnx.ModelProto, weights: list[str]) -> list[str]:
    """Names of the nodes that read any of the initialisers ``weights``; every name must be read
    by some node (a misspelt layer is an error, not a silently quantised one)."""
    wanted = set(weights)
    nodes = [n for n in model.graph.node if wanted.intersection(n.input)]
    missing = wanted.difference(i for n in nodes for i in n.input)
    if missing:
        raise ValueError(f"no node reads {sorted(missing)}")
    return [n.name for n in nodes]


def hard_sigmoid_as_requantize(model: onnx.ModelProto) -> int:
    """Rewrite every ``DQ(x) -> HardSigmoid -> Q(h) -> DQ(h)`` island of a QDQ model so that
    ONNX Runtime runs it as one integer ``QLinearMul``; returns how many were rewritten.

    ``HardSigmoid(x) = clip(alpha * x + 0.5, 0, 1)``. With ``h`` stored at scale ``S = 0.5/127``
    (= 1/254), ``q = round(alpha * x / S) + 127`` is ``round((alpha * x + 0.5) / S)``, and the
    uint8 saturation of ``q`` to ``[0, 255]`` is the clip (to ``[0, 255/254]``: the upper clip is
    0.4 % high, below one step of the tensors around it). So the island becomes
    ``DQ(x) * DQ(alpha) -> Q(S, zero point 127)`` read back as ``DQ(S, zero point 0)``. Int8
    activations use zero points 0 and -127 instead (clip to ``[-1/254, 1]``).

    Islands whose ``beta`` is not 0.5, or that are not wrapped in Q/DQ (excluded nodes), are left
    as they are.
    """
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewritten = 0
    for node in list(graph.node):
        if node.op_type != "HardSigmoid":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        dq_x = producer.get(node.input[0])
        after = consumers.get(node.output[0], [])
        if abs(beta - _BETA) > 1e-6 or alpha <= 0 or dq_x is None or dq_x.op_type != "DequantizeLinear":
            continue
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or len(after[0].input) < 3:
            continue
        q_h = after[0]
        readers = consumers.get(q_h.output[0], [])
        if not readers or any(r.op_type != "DequantizeLinear" for r in readers) or ONNXModel(model).is_graph_output(q_h.output[0]):
            continue
        if len(dq_x.input) < 3 or dq_x.input[2] not in constants or q_h.input[2] not in constants:
            continue
        x_type = numpy_helper.to_array(constants[dq_x.input[2]]).dtype
        h_type = numpy_helper.to_array(constants[q_h.input[2]]).dtype
        if x_type not in (np.uint8, np.int8) or h_type not in (np.uint8, np.int8):
            continue
        base = node.name or node.output[0]
        top = 255 if x_type == np.uint8 else 127
        q_zero, dq_zero = (_STEPS, 0) if h_type == np.uint8 else (0, -_STEPS)
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(top, x_type), f"{base}_alpha_quantized"),
                numpy_helper.from_array(np.array(alpha / top, np.float32), f"{base}_alpha_scale"),
                numpy_helper.from_array(np.array(0, x_type), f"{base}_alpha_zero_point"),
                numpy_helper.from_array(np.array(_BETA / _STEPS, np.float32), f"{base}_h_scale"),
                numpy_helper.from_array(np.array(q_zero, h_type), f"{base}_h_quantize_zero_point"),
                numpy_helper.from_array(np.array(dq_zero, h_type), f"{base}_h_dequantize_zero_point"),
            ]
        )
        dq_alpha = helper.make_node(
            "DequantizeLinear",
            [f"{base}_alpha_quantized", f"{base}_alpha_scale", f"{base}_alpha_zero_point"],
            [f"{base}_alpha"],
            name=f"{base}_alpha_DequantizeLinear",
        )
        mul = helper.make_node("Mul", [node.input[0], f"{base}_alpha"], [node.output[0]], name=f"{base}_as_requantize")
        q_h.input[1], q_h.input[2] = f"{base}_h_scale", f"{base}_h_quantize_zero_point"
        for reader in readers:
            reader.input[1], reader.input[2] = f"{base}_h_scale", f"{base}_h_dequantize_zero_point"
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, mul)
        graph.node.insert(index, dq_alpha)
        rewritten += 1
    if rewritten:
        ONNXModel(model).remove_unused_constant()  # the Q/DQ parameters the rewrite replaced
    return rewritten
