"""Temperature scaling of a released classifier and the choice of its unsure threshold (the
release step behind :mod:`wastesort.confidence`).

Temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017) divides
the logits by the ``T`` that minimises the negative log-likelihood on val. It is written into the
classifier head's weights and bias (:func:`calibrate_onnx`), so ``LOGITS``, ``PROBABILITIES =
softmax(LOGITS)``, every precision variant built from the file and the image-plus-mirror graph
carry it, and the top-1 answer stays the same. Test plays no part in either choice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from wastesort.confidence import METADATA_KEY, TARGET_ACCURACY, TYPICALITY_PREFIX, Confidence, choose_threshold, ece, read, selective
from wastesort.contract import PreprocessContract
from wastesort.evaluation import split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.shipped import IMAGES, LOGITS, ShippedModel, sha256
from wastesort.training.served import SPLITS


class CalibrationError(ValueError):
    """The file cannot be calibrated: no single classifier head, or already calibrated."""


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising :func:`nll` (searched over ``log T`` in ``[-3, 3]``)."""
    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


def _head(proto: onnx.ModelProto, num_classes: int) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    """The classifier head's weight and bias initializers: the one Gemm whose bias is a
    ``(num_classes,)`` initializer."""
    inits = {t.name: t for t in proto.graph.initializer}
    heads = [
        (inits[n.input[1]], inits[n.input[2]])
        for n in proto.graph.node
        if n.op_type == "Gemm" and len(n.input) == 3 and n.input[1] in inits and n.input[2] in inits
        and tuple(inits[n.input[2]].dims) == (num_classes,)
    ]  # fmt: skip
    if len(heads) != 1:
        raise CalibrationError(f"expected one classifier-head Gemm with a ({num_classes},) bias, found {len(heads)}")
    return heads[0]


def scale_head(proto: onnx.ModelProto, num_classes: int, factor: float) -> None:
    """Multiply the classifier head's weight and bias by ``factor`` in place (``LOGITS`` scale
    by it; the top-1 answer is unchanged)."""
    for tensor in _head(proto, num_classes):
        tensor.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(tensor) * np.float32(factor)).astype(np.float32), tensor.name))


def calibrate_onnx(path: Path, confidence: Confidence, out: Path | None = None, typicality: Typicality | None = None) -> Path:
    """Divide ``path``'s logits by ``confidence.temperature`` (in the head's weights) and, with
    ``typicality``, by its factor (:func:`add_typicality`); record ``confidence`` in the metadata;
    write ``out`` (default: in place). Raises :class:`CalibrationError` for a file already
    calibrated."""
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY in props:
        raise CalibrationError(f"{Path(path).name} is already calibrated ({props[METADATA_KEY]})")
    labels = json.loads(props["labels"])
    scale_head(proto, len(labels), 1.0 / confidence.temperature)
    if typicality is not None:
        add_typicality(proto, typicality)
    proto.metadata_props.add(key=METADATA_KEY, value=confidence.to_json())
    onnx.checker.check_model(proto, full_check=True)
    out = out or path
    onnx.save(proto, str(out))
    return out


def softmax_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64 (the fitting side's view of the file)."""
    return softmax(np.asarray(logits, np.float64) / temperature, axis=1)


def _served(logits: np.ndarray, factor: np.ndarray, temperature: float) -> np.ndarray:
    return softmax_probabilities(logits / factor, temperature)


def calibrate_shipped(model: ShippedModel, data: Path, target: float = TARGET_ACCURACY) -> dict:
    """Calibrate ``model``'s files: the temperature fitted on val for the plain export, the
    :class:`Typicality` of the training photos (fitted on train, put on val's scale), both
    written into the plain and TTA files (and the QAT copy made from the same export, whose
    record then names the calibrated export); each file's threshold chosen on val for ``target``
    accuracy among the answered. Records what it does (expected calibration error before and
    after; coverage, accuracy among the answered and the share answered wrongly on val and test)
    as ``metrics.json``'s ``confidence`` and returns that record.

    Raises:
        CalibrationError: a file is already calibrated.
        DatasetError: the split's photos are not under ``data``.
    """
    files = {"plain": model.onnx, **({"tta": model.tta_onnx} if model.tta_onnx.is_file() else {})}
    done = [path.name for path in files.values() if read(path) is not None]
    if done:
        raise CalibrationError(f"already calibrated: {', '.join(done)}")
    qat_current = model.qat_problem() is None
    contract = PreprocessContract.from_onnx(str(model.onnx))
    tensors = {split: split_tensors(model.split(split, data), contract, f"{split} images") for split in ("train", *SPLITS)}
    labels = {split: y for split, (_, y) in tensors.items()}
    staged = has_stages(model.onnx)  # a network without residual stages gets the temperature alone
    seen = {split: stage_features(model.onnx, x, staged) for split, (x, _) in tensors.items()}
    mirror = {split: stage_features(model.onnx, np.ascontiguousarray(tensors[split][0][..., ::-1]), staged) for split in SPLITS}
    temperature = fit_temperature(seen["val"][0], labels["val"])
    typicality = Typicality.fit(seen["train"][1], seen["val"][1]) if staged else None
    record = {
        "temperature": round(temperature, 6),
        "typicality_gate": round(typicality.gate, 4) if typicality else None,
        "target_accuracy": target,
        "fitted_on": "val (temperature, threshold); train and val (typicality)",
        "beyond_gate": {s: float((typicality.score(seen[s][1]) > typicality.gate).mean()) for s in SPLITS} if typicality else None,
        "files": {},
    }
    ones = {split: np.ones((len(labels[split]), 1)) for split in SPLITS}

    def factor(stages: list[np.ndarray], split: str, calibrated: bool) -> np.ndarray:
        return typicality.factor(stages) if calibrated and typicality else ones[split]

    def probabilities(kind: str, split: str, calibrated: bool) -> np.ndarray:
        t = temperature if calibrated else 1.0
        plain = _served(seen[split][0], factor(seen[split][1], split, calibrated), t)
        if kind == "plain":
            return plain
        return 0.5 * (plain + _served(mirror[split][0], factor(mirror[split][1], split, calibrated), t))

    for kind, path in files.items():
        threshold = choose_threshold(probabilities(kind, "val", True), labels["val"], target)
        entry = {"file": path.name, "threshold": round(threshold, 6)}
        for split in SPLITS:
            served = probabilities(kind, split, True)
            entry[split] = {
                "ece_before": round(ece(probabilities(kind, split, False), labels[split]), 4),
                "ece_after": round(ece(served, labels[split]), 4),
                **selective(served, labels[split], threshold),
            }
        record["files"][kind] = entry
        confidence = Confidence(temperature, threshold, target, typicality_gate=typicality.gate if typicality else None)
        calibrate_onnx(path, confidence, typicality=typicality)
        check = OnnxClassifier(path).probabilities(tensors["val"][0])
        if np.abs(check - probabilities(kind, "val", True)).max() > 1e-4:
            raise CalibrationError(f"{path.name}: the calibrated file does not give the fitted probabilities")
    if qat_current:  # the QAT copy shares the export's head: scale it alike and name the calibrated export
        plain = record["files"]["plain"]["threshold"]
        gate = typicality.gate if typicality else None
        calibrate_onnx(model.qat_onnx, Confidence(temperature, plain, target, typicality_gate=gate), typicality=typicality)
        qat = json.loads(model.qat_record.read_text())
        qat |= {"source_sha256": sha256(model.onnx), "calibrated": {"temperature": record["temperature"], "typicality": bool(typicality)}}
        model.qat_record.write_text(json.dumps(qat, indent=2) + "\n")
    metrics = json.loads(model.metrics.read_text())
    metrics["confidence"] = record
    model.metrics.write_text(json.dumps(metrics, indent=2))
    return record


def summary(record: dict) -> str:
    """One line per file and split: its threshold, coverage and accuracy among the answered."""
    gate = record["typicality_gate"]
    lines = [f"temperature {record['temperature']:.3f} (fitted on val)" + (f", typicality gate {gate:.2f}" if gate is not None else "")]
    for entry in record["files"].values():
        for split in SPLITS:
            m = entry[split]
            lines.append(
                f"{entry['file']} {split}: threshold {entry['threshold']:.3f}, answered {m['coverage']:.1%} at "
                f"{m['accuracy_answered']:.4f}, answered wrongly {m['answered_wrong']:.1%}; "
                f"ECE {m['ece_before']:.3f} -> {m['ece_after']:.3f}"
            )
    return "\n".join(lines)


#: Largest excess over the gate that still scales the logits: they are divided by at most 100,
#: flat enough that no answer reaches a threshold, while PROBABILITIES keep the order of LOGITS
#: in float32 (a much larger divisor rounds them all to 1/6, and the top-1 label to the first class).
MAX_EXCESS = math.log(100.0)
#: Val photos beyond the typicality gate: the gate is this percentile of their scores.
GATE_PERCENTILE = 97.5


def stage_ends(proto: onnx.ModelProto) -> list[str]:
    """The last residual ``Add`` of each spatial resolution (the end of each stage of the
    network), found by shape, from the largest resolution to the smallest."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    last: dict[int, str] = {}
    for node in proto.graph.node:
        shape = shapes.get(node.output[0], [])
        if node.op_type == "Add" and len(shape) == 4 and shape[2] > 0:
            last[shape[2]] = node.output[0]
    if not last:
        raise CalibrationError("no residual Add with a known spatial shape: not a network whose stages can be found")
    return [last[side] for side in sorted(last, reverse=True)]


def has_stages(path: Path) -> bool:
    """Whether the network of ``path`` has residual stages :class:`Typicality` can read."""
    try:
        stage_ends(onnx.load(str(path)))
    except CalibrationError:
        return False
    return True


def stage_features(path: Path, images: np.ndarray, stages: bool = True, batch: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """The head's outputs (``LOGITS``) and, with ``stages``, each stage end's globally
    average-pooled features, ``(N, C_i)``, of the ONNX file ``path`` on ``images``."""
    proto = onnx.load(str(path))
    names = stage_ends(proto) if stages else []
    for name in names:
        proto.graph.node.append(onnx.helper.make_node("GlobalAveragePool", [name], [f"probe_{name}"]))
        proto.graph.output.append(onnx.helper.make_tensor_value_info(f"probe_{name}", onnx.TensorProto.FLOAT, None))
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, pooled = [], [[] for _ in names]
    for i in range(0, len(images), batch):
        out = session.run([LOGITS, *(f"probe_{n}" for n in names)], {IMAGES: images[i : i + batch]})
        logits.append(out[0])
        for j, f in enumerate(out[1:]):
            pooled[j].append(f.reshape(len(f), -1))
    return np.concatenate(logits), [np.concatenate(p) for p in pooled]


@dataclass
class Typicality:
    """How unlike the training photos a photo is, at every stage of the network: each stage's
    pooled features get one Gaussian over all training photos (Ledoit-Wolf covariance), the
    squared Mahalanobis distance is put on val's scale (median and MAD), and the score is the
    largest over the stages. Beyond ``gate`` (a percentile of val's scores) the logits are
    divided by ``exp(score - gate)`` (at most ``exp(MAX_EXCESS)``): the model's probabilities flatten
    on photos unlike any it was trained on, so that they fall below the unsure threshold. The top-1
    answer never changes."""

    means: list[np.ndarray]
    precisions: list[np.ndarray]
    median: np.ndarray
    scale: np.ndarray
    gate: float

    @classmethod
    def fit(cls, train: list[np.ndarray], val: list[np.ndarray], percentile: float = GATE_PERCENTILE) -> Typicality:
        from sklearn.covariance import LedoitWolf

        means = [f.mean(0) for f in train]
        precisions = [LedoitWolf().fit(f - m).precision_ for f, m in zip(train, means, strict=True)]
        raw = cls._distances(means, precisions, val)
        median = np.median(raw, axis=0)
        scale = 1.4826 * np.median(np.abs(raw - median), axis=0)
        typical = cls(means, precisions, median, scale, 0.0)
        return cls(means, precisions, median, scale, float(np.percentile(typical.score(val), percentile)))

    @staticmethod
    def _distances(means: list[np.ndarray], precisions: list[np.ndarray], stages: list[np.ndarray]) -> np.ndarray:
        rows = [np.einsum("nd,de,ne->n", f - m, p, f - m) for f, m, p in zip(stages, means, precisions, strict=True)]
        return np.stack(rows, 1)

    def score(self, stages: list[np.ndarray]) -> np.ndarray:
        """``(N,)``: the largest standardised distance over the stages."""
        return ((self._distances(self.means, self.precisions, stages) - self.median) / self.scale).max(1)

    def factor(self, stages: list[np.ndarray]) -> np.ndarray:
        """``(N, 1)``: what the logits are divided by (1 up to the gate)."""
        return np.exp(np.clip(self.score(stages) - self.gate, 0.0, MAX_EXCESS))[:, None]


def add_typicality(proto: onnx.ModelProto, typicality: Typicality) -> None:
    """Compute :class:`Typicality` in ``proto``'s graph from its own stage ends and divide the
    classifier head's output by its factor (in place). The nodes go before the head, so that
    the INT8 build's float head stays the head; they are named with :data:`TYPICALITY_PREFIX`."""
    labels = json.loads({p.key: p.value for p in proto.metadata_props}["labels"])
    weight, _ = _head(proto, len(labels))
    graph = proto.graph
    head_index = next(i for i, n in enumerate(graph.node) if n.op_type == "Gemm" and n.input[1] == weight.name)
    head = graph.node[head_index]
    p, make = TYPICALITY_PREFIX, onnx.helper.make_node
    consts = {
        f"{p}axes": np.array([1], np.int64),
        f"{p}gate": np.array([typicality.gate], np.float32),
        f"{p}none": np.array(0.0, np.float32),
        f"{p}most": np.array(MAX_EXCESS, np.float32),
    }
    nodes, scores = [], []
    stages = stage_ends(proto)
    if len(stages) != len(typicality.means):
        raise CalibrationError(f"the graph has {len(stages)} stages, the typicality {len(typicality.means)}")
    for i, name in enumerate(stages):
        consts |= {
            f"{p}mean_{i}": typicality.means[i].astype(np.float32)[None],
            f"{p}precision_{i}": typicality.precisions[i].astype(np.float32),
            f"{p}median_{i}": np.array([typicality.median[i]], np.float32),
            f"{p}scale_{i}": np.array([typicality.scale[i]], np.float32),
        }
        t = f"{p}{i}_"
        nodes += [
            make("GlobalAveragePool", [name], [t + "pooled"], name=t + "pool"),
            make("Flatten", [t + "pooled"], [t + "flat"], axis=1, name=t + "flatten"),
            make("Sub", [t + "flat", f"{p}mean_{i}"], [t + "diff"], name=t + "centre"),
            make("MatMul", [t + "diff", f"{p}precision_{i}"], [t + "projected"], name=t + "project"),
            make("Mul", [t + "projected", t + "diff"], [t + "terms"], name=t + "terms"),
            make("ReduceSum", [t + "terms", f"{p}axes"], [t + "distance"], keepdims=1, name=t + "distance"),
            make("Sub", [t + "distance", f"{p}median_{i}"], [t + "shifted"], name=t + "shift"),
            make("Div", [t + "shifted", f"{p}scale_{i}"], [t + "score"], name=t + "standardise"),
        ]
        scores.append(t + "score")
    nodes += [
        make("Max", scores, [p + "score"], name=p + "score"),
        make("Sub", [p + "score", f"{p}gate"], [p + "beyond"], name=p + "beyond"),
        make("Clip", [p + "beyond", f"{p}none", f"{p}most"], [p + "excess"], name=p + "excess"),
        make("Exp", [p + "excess"], [p + "factor"], name=p + "factor"),
    ]
    raw = head.output[0]
    if raw in {o.name for o in graph.output}:  # the head writes LOGITS itself: the division takes over the name
        scaled, raw = raw, p + "head"
        head.output[0] = raw
    else:
        scaled = p + "logits"
        for node in graph.node[head_index + 1 :]:
            node.input[:] = [scaled if name == raw else name for name in node.input]
    divide = make("Div", [raw, p + "factor"], [scaled], name=p + "divide")
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    rest = list(graph.node[head_index + 1 :])
    kept = list(graph.node[:head_index])
    del graph.node[:]
    graph.node.extend([*kept, *nodes, head, divide, *rest])


def typicality_factor(path: str | Path, images: np.ndarray) -> np.ndarray:
    """``(N, 1)``: what the file ``path`` divides its logits by for ``images`` (ones for a file
    without :func:`add_typicality`'s nodes), so that a network rebuilt from its weights (which
    carry the temperature but not the typicality) can be compared with it."""
    proto = onnx.load(str(path))
    name = TYPICALITY_PREFIX + "factor"
    if not any(name in n.output for n in proto.graph.node):
        return np.ones((len(images), 1), np.float32)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([name], {IMAGES: images[i : i + 64]})[0] for i in range(0, len(images), 64)])


def typicality_of(path: str | Path) -> Typicality | None:
    """The :class:`Typicality` whose tail :func:`add_typicality` wrote into ``path``, read back
    from its initialisers, or ``None``."""
    values = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name.startswith(TYPICALITY_PREFIX)}
    if not values:
        return None
    stages = sorted(int(k.rsplit("_", 1)[1]) for k in values if k.startswith(f"{TYPICALITY_PREFIX}mean_"))
    return Typicality(
        [values[f"{TYPICALITY_PREFIX}mean_{i}"][0] for i in stages],
        [values[f"{TYPICALITY_PREFIX}precision_{i}"] for i in stages],
        np.array([float(values[f"{TYPICALITY_PREFIX}median_{i}"][0]) for i in stages]),
        np.array([float(values[f"{TYPICALITY_PREFIX}scale_{i}"][0]) for i in stages]),
        float(values[f"{TYPICALITY_PREFIX}gate"][0]),
    )


def network_logits(path: str | Path, images: np.ndarray) -> np.ndarray:
    """The logits of the network inside ``path`` without its typicality tail (its weights carry
    the temperature): what a network rebuilt from the file's weights computes."""
    return OnnxClassifier(path).batched(LOGITS, images) * typicality_factor(path, images)


def carry_calibration(source: Path, target: Path) -> None:
    """Give ``target``, a network exported from ``source``'s own weights (which already carry the
    temperature), ``source``'s typicality tail and confidence record (in place)."""
    confidence = read(source)
    if confidence is None:
        return
    proto = onnx.load(str(target))
    typicality = typicality_of(source)
    if typicality is not None:
        add_typicality(proto, typicality)
    proto.metadata_props.add(key=METADATA_KEY, value=confidence.to_json())
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(target))


def calibrate_file(
    path: Path, train_x: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, target: float = TARGET_ACCURACY
) -> tuple[Confidence, dict]:
    """Calibrate one uncalibrated file in place from photos of its own kind (``train_x`` for the
    typicality, ``val_x``/``val_y`` for the temperature, the typicality's scale and the
    threshold), as :func:`calibrate_shipped` does for a release; returns the record and what it
    does on val (ECE before and after, the selective figures)."""
    staged = has_stages(path)
    logits, train_stages = stage_features(path, train_x, staged)
    val_logits, val_stages = stage_features(path, val_x, staged)
    temperature = fit_temperature(val_logits, val_y)
    typicality = Typicality.fit(train_stages, val_stages) if staged else None
    factor = typicality.factor(val_stages) if typicality else np.ones((len(val_y), 1))
    probabilities = _served(val_logits, factor, temperature)
    threshold = choose_threshold(probabilities, val_y, target)
    confidence = Confidence(temperature, threshold, target, "val", typicality.gate if typicality else None)
    calibrate_onnx(path, confidence, typicality=typicality)
    figures = {"ece_before": ece(softmax_probabilities(val_logits), val_y), "ece_after": ece(probabilities, val_y)}
    return confidence, figures | selective(probabilities, val_y, threshold)
