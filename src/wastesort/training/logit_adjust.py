"""Logit adjustment for a classifier trained with the class-weighted loss (``--balance loss``).

Why: cross-entropy weighted by ``w_c`` (:func:`wastesort.data.class_weights`, ``w_c`` ∝ 1/n_c
over the training split) is minimised by ``p_w(c|x)`` ∝ ``w_c p(c|x)``: the network learns to
over-predict the rare classes (trash) in proportion to their weight. Adding ``-log w_c`` to its
logits (``log n_c`` up to a constant) gives back the posterior for the training split's class
frequencies: post-hoc logit adjustment with τ = 1 (Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021). The offsets follow from the loss the model was trained with; nothing is
tuned on val or test.

How: the offsets (centred to mean 0) are added to the bias of the classifier head, the one
``Gemm`` of an exported graph (:func:`adjust_onnx`). ``LOGITS`` and ``PROBABILITIES`` then shift
exactly as if the head had been trained with them, in the plain graph and in each pass of the
flip-averaged (TTA) graph; INT8 variants and the QAT copy made from the adjusted export inherit
them. The offsets are recorded in the file's metadata under :data:`METADATA_KEY`, and a file
already adjusted is refused, so an adjustment cannot be applied twice.

:func:`adjust_shipped` applies it to a committed model (``train/release.py`` for a run trained
with ``--balance loss``; ``experiments/backfills/adjust_logits.py`` for a model released before this existed):
both ONNX files, then val and test re-measured through the serving preprocessing with ONNX
Runtime, and ``models/<net>.metrics.json`` and the test confusion matrix rewritten from them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from wastesort.confidence import METADATA_KEY as CONFIDENCE_KEY
from wastesort.contract import PreprocessContract
from wastesort.data import Sample, class_weights
from wastesort.evaluation import classification_metrics, split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.shipped import LOGITS, ShippedModel
from wastesort.training.served import record_served, served_figures

#: ONNX ``metadata_props`` key holding the adjustment applied to a file (JSON).
METADATA_KEY = "logit_adjustment"
#: The training option whose loss the adjustment undoes (``TrainConfig.balance``).
BALANCE = "loss"
RULE = "log class frequency of the training split (= -log of the class-weighted loss's weights), centred; tau 1"


class AdjustError(ValueError):
    """The file cannot be adjusted: no single classifier-head Gemm, wrong class count, or
    already adjusted."""


def offsets_for(train: list[Sample], num_classes: int) -> np.ndarray:
    """float32 ``(C,)``: ``-log`` of the loss's class weights over ``train``, centred to mean 0."""
    offsets = -np.log(class_weights(train, num_classes).astype(np.float64))
    return (offsets - offsets.mean()).astype(np.float32)


def _by_class(labels: tuple[str, ...], offsets: np.ndarray) -> dict[str, float]:
    """The offsets as recorded (file metadata and metrics): class name -> value, 6 decimals."""
    return {c: round(float(v), 6) for c, v in zip(labels, offsets, strict=True)}


def recorded(path: Path) -> dict | None:
    """The adjustment recorded in ``path``'s metadata (``{"offsets": {...}, "rule": ...}``), or ``None``."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None


def recorded_offsets(path: Path) -> np.ndarray | None:
    """float32 ``(C,)``: the offsets recorded in ``path`` in its label order, or ``None``.

    Raises:
        AdjustError: the record does not name the file's classes.
    """
    record = recorded(path)
    if record is None:
        return None
    labels = PreprocessContract.from_onnx(str(path)).labels
    if set(record["offsets"]) != set(labels):
        raise AdjustError(f"{path.name}: adjustment offsets for {sorted(record['offsets'])}, classes {labels}")
    return np.array([record["offsets"][c] for c in labels], np.float32)


def _head_bias(proto: onnx.ModelProto, num_classes: int) -> onnx.TensorProto:
    """The bias of the classifier head: the one Gemm whose bias is a ``(num_classes,)``
    initializer (a network may have other dense layers before it, e.g. MobileNetV3's)."""
    inits = {t.name: t for t in proto.graph.initializer}
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    heads = [
        inits[n.input[2]] for n in gemms if len(n.input) == 3 and n.input[2] in inits and tuple(inits[n.input[2]].dims) == (num_classes,)
    ]
    if len(heads) != 1:
        raise AdjustError(
            f"expected one classifier-head Gemm with a ({num_classes},) bias initializer, "
            f"found {len(heads)} among {len(gemms)} Gemm node(s)"
        )
    return heads[0]


def adjust_onnx(path: Path, offsets: np.ndarray, out: Path | None = None) -> Path:
    """Add ``offsets`` (``(C,)``, in the file's label order) to the classifier head's bias of
    ``path`` and record them; write ``out`` (default: in place). Raises :class:`AdjustError`."""
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY in props:
        raise AdjustError(f"{path.name} is already logit-adjusted ({props[METADATA_KEY]})")
    if CONFIDENCE_KEY in props:  # the offsets would have to be divided by its temperature
        raise AdjustError(f"{path.name} is calibrated: adjust its logits before calibrating it")
    labels = PreprocessContract.from_metadata(props).labels
    offsets = np.asarray(offsets, np.float32)
    if offsets.shape != (len(labels),):
        raise AdjustError(f"{len(offsets)} offsets for {len(labels)} classes")
    bias = _head_bias(proto, len(labels))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + offsets, bias.name))
    record = {"offsets": _by_class(labels, offsets), "rule": RULE}
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(record))
    onnx.checker.check_model(proto, full_check=True)
    out = out or path
    onnx.save(proto, str(out))
    return out


def _measure(path: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], classes: tuple[str, ...]) -> dict:
    clf = OnnxClassifier(path)
    return {split: classification_metrics(labels[split], clf.batched(LOGITS, x).argmax(1), classes) for split, x in images.items()}


def _summary(m: dict) -> dict:
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "f1": {c: v["f1"] for c, v in m["per_class"].items()}}


def adjust_shipped(model: ShippedModel, data: Path) -> dict:
    """Adjust ``model``'s committed plain and TTA exports with the offsets of its training split
    (photos under ``data``) and rewrite its metrics: ``val``/``test`` from the adjusted plain
    export (ONNX Runtime, serving preprocessing), the ``tta`` record re-measured (the TTA file is
    removed if it no longer beats the plain one on val), the served file's figures and its test
    confusion PNG (:func:`~wastesort.training.served.record_served`, from these measurements), and a
    ``logit_adjustment`` record with every figure before and after. Returns that record.

    Raises:
        AdjustError: a file cannot be adjusted (nothing is written then).
        DatasetError: the split's photos are not under ``data``.
    """
    files = {"plain": model.onnx, **({"tta": model.tta_onnx} if model.tta_onnx.is_file() else {})}
    done = [path.name for path in files.values() if recorded(path)]
    if done:
        raise AdjustError(f"already logit-adjusted: {', '.join(done)}")
    contract = PreprocessContract.from_onnx(str(model.onnx))
    classes = contract.labels
    offsets = offsets_for(model.split("train", data), len(classes))
    samples = {split: model.split(split, data) for split in ("val", "test")}
    tensors = {split: split_tensors(v, contract, f"{split} images") for split, v in samples.items()}
    images, labels = ({split: t[i] for split, t in tensors.items()} for i in (0, 1))
    before = {name: _measure(path, images, labels, classes) for name, path in files.items()}
    with tempfile.TemporaryDirectory() as tmp:  # adjust both or neither
        staged = {name: adjust_onnx(path, offsets, Path(tmp) / path.name) for name, path in files.items()}
        for name, path in staged.items():
            shutil.move(path, files[name])
    after = {name: _measure(path, images, labels, classes) for name, path in files.items()}
    record = {
        "rule": RULE,
        "offsets": _by_class(classes, offsets),
        "measured": "ONNX Runtime, serving preprocessing",
        "before": {name: {split: _summary(m) for split, m in by_split.items()} for name, by_split in before.items()},
        "after": {name: {split: _summary(m) for split, m in by_split.items()} for name, by_split in after.items()},
    }
    metrics = json.loads(model.metrics.read_text())
    metrics["val"], metrics["test"] = after["plain"]["val"], after["plain"]["test"]
    if "tta" in after:
        tta = {f"{split}_{name}": after[name][split]["accuracy"] for name in ("plain", "tta") for split in ("val", "test")}
        tta["kept"] = record["tta_kept"] = model.settle_tta(tta["val_plain"], tta["val_tta"])
        metrics["tta"] = tta
    metrics["logit_adjustment"] = record
    model.metrics.write_text(json.dumps(metrics, indent=2))
    served = next(name for name, path in files.items() if path == model.served_onnx)  # after settle_tta
    record_served(model, served_figures(model.served_onnx, after[served], classes))
    return record


def report(record: dict) -> None:
    """Print :func:`adjust_shipped`'s record: the offsets, then top-1, macro F1 and the rarest
    class's F1 before -> after, per file and split."""
    print("logit adjustment: " + ", ".join(f"{c} {v:+.3f}" for c, v in record["offsets"].items()))
    rare = min(record["offsets"], key=record["offsets"].get)
    for name, by_split in record["after"].items():
        for split, after in by_split.items():
            before = record["before"][name][split]
            print(
                f"  {name} {split}: top-1 {before['accuracy']:.4f} -> {after['accuracy']:.4f}, "
                f"macro F1 {before['macro_f1']:.4f} -> {after['macro_f1']:.4f}, "
                f"{rare} F1 {before['f1'][rare]:.3f} -> {after['f1'][rare]:.3f}"
            )
    if "tta_kept" in record:
        print(f"  TTA kept (beats the plain model on val): {record['tta_kept']}")
