"""Test-time augmentation (the image and its horizontal mirror, probabilities averaged) as an
ONNX rewrite of any exported classifier, so that a precision variant (the INT8 QDQ model) can
be served with TTA as well as the FP32 export.

:func:`flip_averaged` computes what :class:`wastesort.training.export.FlipAveraged` exports
from PyTorch, on the ONNX graph: ``IMAGES`` (N, 3, H, W) and its mirror go through the
classifier as one batch of 2N, the softmax of its ``LOGITS`` (in float, as in PyTorch; an
INT8 model's own ``PROBABILITIES`` are quantised) is averaged over the two halves, and the
result keeps the classifier contract (``LOGITS`` = log of the average, ``PROBABILITIES`` =
softmax of ``LOGITS`` = the average; the same names, types and metadata). Nodes that only fed
the classifier's own ``PROBABILITIES`` are dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wastesort.shipped import IMAGES, LOGITS, PROBABILITIES

#: Prefix of every tensor and node the rewrite adds (none of the exporter's names use it).
PREFIX = "tta_"


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _needed(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` (in topological order) that the graph's ``outputs`` depend on, order kept."""
    wanted, kept = set(outputs), []
    for node in reversed(nodes):
        if wanted & set(node.output):
            kept.append(node)
            wanted |= set(node.input)
    return kept[::-1]


def _classes(graph: onnx.GraphProto) -> int:
    output = next(o for o in graph.output if o.name == PROBABILITIES)
    dim = output.type.tensor_type.shape.dim[1]
    if not dim.dim_value:
        raise ValueError(f"{PROBABILITIES} has no static class dimension: cannot pair the two halves")
    return dim.dim_value


def flip_averaged(src: Path, dst: Path) -> Path:
    """Write ``dst``: the classifier ``src`` with test-time flip averaging in its graph.

    ``src`` must take one ``IMAGES`` input and produce ``LOGITS`` and ``PROBABILITIES`` with a
    static class dimension (every export and variant of this project does); its metadata
    (labels, preprocessing contract) is kept. Checked by ``onnx.checker``."""
    model = onnx.load(str(src))
    graph = model.graph
    if [i.name for i in graph.input] != [IMAGES] or {LOGITS, PROBABILITIES} - {o.name for o in graph.output}:
        raise ValueError(f"{src}: expected one input {IMAGES} and outputs {LOGITS}, {PROBABILITIES}")
    for output in graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ValueError(f"{src}: output {output.name} is not float32")
    if any(n.name.startswith(PREFIX) for n in graph.node):
        raise ValueError(f"{src} already has test-time augmentation nodes ({PREFIX}*)")
    classes = _classes(graph)
    batch, inner_probs, inner_logits = PREFIX + "batch", PREFIX + "probabilities", PREFIX + "logits"
    _rename(graph, IMAGES, batch)
    _rename(graph, PROBABILITIES, inner_probs)
    _rename(graph, LOGITS, inner_logits)
    constants = {
        "starts": [-1],
        "ends": [np.iinfo(np.int64).min],
        "axes": [3],
        "steps": [-1],
        "pairs": [2, -1, classes],
        "mean_axes": [0],
    }
    graph.initializer.extend(numpy_helper.from_array(np.array(v, dtype=np.int64), f"{PREFIX}const_{k}") for k, v in constants.items())
    c = {k: f"{PREFIX}const_{k}" for k in constants}
    before = [
        helper.make_node("Slice", [IMAGES, c["starts"], c["ends"], c["axes"], c["steps"]], [PREFIX + "mirror"], name=PREFIX + "mirror"),
        helper.make_node("Concat", [IMAGES, PREFIX + "mirror"], [batch], axis=0, name=PREFIX + "concat"),
    ]
    after = [
        helper.make_node("Softmax", [inner_logits], [PREFIX + "each"], axis=1, name=PREFIX + "each"),
        helper.make_node("Reshape", [PREFIX + "each", c["pairs"]], [PREFIX + "pairs"], name=PREFIX + "pairs"),
        helper.make_node("ReduceMean", [PREFIX + "pairs", c["mean_axes"]], [PREFIX + "mean"], keepdims=0, name=PREFIX + "mean"),
        helper.make_node("Log", [PREFIX + "mean"], [LOGITS], name=PREFIX + "log"),
        helper.make_node("Softmax", [LOGITS], [PROBABILITIES], axis=1, name=PREFIX + "softmax"),
    ]
    nodes = _needed([*before, *graph.node, *after], {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # shapes inferred for the inner batch of 2N no longer hold for N: let the runtime infer them
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst
