"""How far can any threshold go? The TrashNet target (at least 90% of test photos answered, at
least 98% of those right) judged against the best threshold there could be: the one chosen on
the test split itself.

    python experiments/unsure_signal/ceiling.py --data ../shared/data/trashnet

A diagnostic, not a candidate: the served files keep their val-chosen thresholds. For each
signal (the served plain and image-plus-mirror files, and the same without the typicality gate,
the head's calibrated logits before it), it reports the val-chosen threshold on test, the
*ceiling* (the most test photos answered at 98% by a threshold chosen on test), the same with one
threshold per predicted class (chosen on test too) and the accuracy among the 90% most confident
test photos. Where the ceilings are under 90%, no threshold on that signal meets the target: the
ranking of the photos is the limit, and only a model that ranks them better (more right, or its
mistakes less confident) can.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from wastesort.confidence import TARGET_ACCURACY, TYPICALITY_PREFIX, choose_threshold, selective
from wastesort.contract import PreprocessContract
from wastesort.evaluation import split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import LOGITS, ShippedModel
from wastesort.training.calibrate import softmax_probabilities

#: The TrashNet target's share answered.
COVERAGE = 0.90


def ceiling(probabilities: np.ndarray, labels: np.ndarray, target: float = TARGET_ACCURACY, coverage: float = COVERAGE) -> dict:
    """What the best threshold on these photos' own top probabilities does: the most photos
    answered with ``target`` of them right (``ceiling``), and the accuracy among the
    ``coverage`` share most confident (``accuracy_at_coverage``)."""
    probabilities = np.asarray(probabilities)
    right = probabilities.argmax(axis=1) == labels
    order = np.argsort(-probabilities.max(axis=1), kind="stable")
    most_confident = order[: math.ceil(coverage * len(labels))]
    return {
        "ceiling": selective(probabilities, labels, choose_threshold(probabilities, labels, target)),
        "accuracy_at_coverage": float(right[most_confident].mean()) if len(most_confident) else 1.0,
    }


def per_class_thresholds(probabilities: np.ndarray, labels: np.ndarray, target: float = TARGET_ACCURACY) -> np.ndarray:
    """One threshold per class ``(C,)``, applied to the photos predicted as that class, that
    answer the most of these photos with ``target`` of them right (exact: the mistakes allowed
    are shared out among the classes by a knapsack over each class's photos ranked by
    confidence). ``inf`` answers none of a class; a class no photo is predicted as gets the one
    threshold of :func:`~wastesort.confidence.choose_threshold`."""
    probabilities = np.asarray(probabilities)
    predicted, top = probabilities.argmax(axis=1), probabilities.max(axis=1)
    wrong = predicted != labels
    thresholds = np.full(probabilities.shape[1], choose_threshold(probabilities, labels, target))
    best: dict[int, tuple[int, dict[int, int]]] = {0: (0, {})}  # mistakes -> (answered, answered per class)
    ranked = {}
    for c in np.unique(predicted):
        rows = np.flatnonzero(predicted == c)
        ranked[c] = rows[np.argsort(-top[rows], kind="stable")]
        errors = np.concatenate([[0], np.cumsum(wrong[ranked[c]])])
        grown: dict[int, tuple[int, dict[int, int]]] = {}
        for j in range(int(errors[-1]) + 1):
            k = int(np.flatnonzero(errors <= j)[-1])  # the most of this class answered with <= j mistakes
            for mistakes, (answered, ks) in best.items():
                if answered + k > grown.get(mistakes + j, (-1, {}))[0]:
                    grown[mistakes + j] = (answered + k, {**ks, int(c): k})
        best = grown
    feasible = [(answered, ks) for mistakes, (answered, ks) in best.items() if answered and (answered - mistakes) / answered >= target]
    ks = max(feasible, key=lambda f: f[0], default=(0, {c: 0 for c in ranked}))[1]
    for c, k in ks.items():
        thresholds[c] = top[ranked[c][k - 1]] if k else np.inf
    return thresholds


def selective_per_class(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> dict:
    """:func:`~wastesort.confidence.selective` with a threshold per predicted class."""
    probabilities = np.asarray(probabilities)
    return selective(probabilities, labels, thresholds[probabilities.argmax(axis=1)])  # each row against its class's


def per_class_ceiling(probabilities: np.ndarray, labels: np.ndarray, target: float = TARGET_ACCURACY) -> dict:
    """The most photos answered with ``target`` of them right when each predicted class has its
    own threshold, all chosen on these photos."""
    return selective_per_class(probabilities, labels, per_class_thresholds(probabilities, labels, target))


def ungated_logits_name(proto: onnx.ModelProto) -> str:
    """The calibrated head's logits before the typicality gate divides them (the gate's input)."""
    gate = [n for n in proto.graph.node if LOGITS in n.output and n.name.startswith(TYPICALITY_PREFIX)]
    if not gate:
        raise ValueError(f"{LOGITS} is not computed by a typicality gate: the file is not gated")
    return gate[0].input[0]


class Ungated:
    """Calibrated probabilities of a gated file without its typicality gate: a copy of it in
    ``scratch`` that also outputs the gate's input logits, run as any other file."""

    def __init__(self, path: Path, scratch: Path) -> None:
        proto = onnx.load(str(path))
        self.name = ungated_logits_name(proto)
        proto.graph.output.append(onnx.helper.make_tensor_value_info(self.name, onnx.TensorProto.FLOAT, None))
        copy = scratch / f"{path.stem}.ungated.onnx"
        onnx.save(proto, str(copy))
        self.classifier = OnnxClassifier(copy)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``(N, C)`` for float32 ``(N, 3, H, W)`` preprocessed images."""
        return softmax_probabilities(self.classifier.batched(self.name, x))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ceiling.md"))
    args = parser.parse_args(argv)
    model = ShippedModel()
    contract = PreprocessContract.from_onnx(str(model.onnx))
    sets = {s: split_tensors(model.split(s, args.data), contract, s) for s in ("val", "test")}
    plain, tta = OnnxClassifier(model.onnx), OnnxClassifier(model.tta_onnx)
    with tempfile.TemporaryDirectory() as scratch:
        ungated = Ungated(model.onnx, Path(scratch))
        no_gate = {s: ungated.probabilities(x) for s, (x, _) in sets.items()}
        no_gate_mirrored = {s: ungated.probabilities(np.ascontiguousarray(x[..., ::-1])) for s, (x, _) in sets.items()}
    signals: dict[str, dict[str, np.ndarray]] = {
        f"served `{model.onnx.name}`": {s: plain.probabilities(x) for s, (x, _) in sets.items()},
        f"served `{model.tta_onnx.name}` (image + mirror)": {s: tta.probabilities(x) for s, (x, _) in sets.items()},
        "no typicality gate": no_gate,
        "no typicality gate, image + mirror": {s: 0.5 * (no_gate[s] + no_gate_mirrored[s]) for s in sets},
    }
    y_val, y_test = sets["val"][1], sets["test"][1]
    rows, record = [], {}
    for name, probs in signals.items():
        threshold = choose_threshold(probs["val"], y_val, TARGET_ACCURACY)
        chosen = selective(probs["test"], y_test, threshold)
        best = ceiling(probs["test"], y_test) | {"per_class_ceiling": per_class_ceiling(probs["test"], y_test)}
        top1 = float((probs["test"].argmax(1) == y_test).mean())
        record[name] = {"val_threshold": threshold, "test": chosen, "test_top1": top1, **best}
        c, k = best["ceiling"], best["per_class_ceiling"]
        rows.append(
            f"| {name} | {top1:.4f} | {threshold:.3f}: {chosen['coverage']:.1%} at {chosen['accuracy_answered']:.4f} "
            f"| {c['coverage']:.1%} at {c['accuracy_answered']:.4f} | {k['coverage']:.1%} at {k['accuracy_answered']:.4f} "
            f"| {best['accuracy_at_coverage']:.4f} |"
        )
    text = "\n".join(
        [
            f"# Unsure ceiling: measured by `experiments/unsure_signal/ceiling.py` on {one_line(describe())}",
            "",
            f"The target: at least {COVERAGE:.0%} of TrashNet's {len(y_test)} test photos answered, at least "
            f"{TARGET_ACCURACY:.0%} of them right. The ceiling's threshold is chosen on test itself (a diagnostic: "
            "no file ships with it).",
            "",
            "| signal | test top-1 | val-chosen threshold: test answered at right | ceiling: test answered at right "
            f"| ceiling, a threshold per predicted class | right among the {COVERAGE:.0%} most confident test photos |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    write_results(args.out, text, {"signals": record})
    return 0


def write_results(out: Path, text: str, record: dict) -> None:
    """The table ``text`` to ``out`` and ``record`` with the machine to its ``.json`` twin; printed."""
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"machine": one_line(describe()), **record}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
