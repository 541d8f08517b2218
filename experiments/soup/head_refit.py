"""Head refit on the soup's own features (experiments/soup/README.md, "Refitting the head").

The soup averages three lineages' heads as well as their backbones, so its head need not be
the best linear classifier of its own pooled features. This fits one (scikit-learn's
multinomial ``LogisticRegression``, unweighted so that it learns the training split's class
frequencies, as the logit-adjusted head does) on the served plain file's pooled features of
the training photos and their mirrors, with C chosen by 5-fold cross-validation over training
photos (both views of a photo in one fold). Prints top-1 and trash F1 of the served head and
the refitted one, both flip-averaged like the served TTA model, on train, val and test.

Example:
    python experiments/soup/head_refit.py
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from wastesort.evaluation import classification_metrics, split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import DEFAULT_NET, ShippedModel

SERVED = ShippedModel(DEFAULT_NET)
CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
SPLITS = ("train", "val", "test")


def features(proto: onnx.ModelProto, splits: tuple[str, ...]) -> tuple[dict, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Per split ``(pooled features, mirrored pooled features, labels)``, the head's W and b, and
    the class names."""
    (head,) = [n for n in proto.graph.node if n.op_type == "Gemm"]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    proto.graph.output.append(onnx.helper.make_tensor_value_info(head.input[0], onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(proto, str(Path(tmp) / "features.onnx"))
        clf = OnnxClassifier(Path(tmp) / "features.onnx")
        out = {}
        for split in splits:
            x, y = split_tensors(SERVED.split(split, DEFAULT_TRASHNET), clf.contract)
            out[split] = (*[clf.batched(head.input[0], v) for v in (x, np.ascontiguousarray(x[..., ::-1]))], y)
    return out, inits[head.input[1]], inits[head.input[2]], clf.labels


def flip_mean(predict: Callable[[np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Class probabilities averaged over a photo and its mirror, as the served TTA graph does."""
    return (predict(a) + predict(b)) / 2


def choose_c(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    """C with the best 5-fold flip-averaged top-1 over training photos (ties: the larger C)."""
    scores = {}
    for c in CS:
        right = 0
        for fit, held in StratifiedKFold(5, shuffle=True, random_state=0).split(a, y):
            lr = LogisticRegression(C=c, max_iter=3000).fit(np.concatenate([a[fit], b[fit]]), np.concatenate([y[fit]] * 2))
            right += int(np.sum(flip_mean(lr.predict_proba, a[held], b[held]).argmax(1) == y[held]))
        scores[c] = right / len(y)
        print(f"C {c:5.2f} cross-validated top-1 {scores[c]:.4f}")
    return max(CS, key=lambda c: (scores[c], c))


def main() -> None:
    data, weight, bias, labels = features(onnx.load(str(SERVED.onnx)), SPLITS)
    a, b, y = data["train"]
    c = choose_c(a, b, y)
    refit = LogisticRegression(C=c, max_iter=3000).fit(np.concatenate([a, b]), np.concatenate([y, y]))
    heads = {"served head": lambda f: softmax(f @ weight.T + bias, axis=1), f"refit, C {c}": refit.predict_proba}
    for name, predict in heads.items():
        for split, (a, b, y) in data.items():
            m = classification_metrics(y, flip_mean(predict, a, b).argmax(1), labels)
            right = round(m["accuracy"] * len(y))
            print(f"{name:14s} {split:5s} top-1 {m['accuracy']:.4f} ({right}/{len(y)}) trash F1 {m['per_class']['trash']['f1']:.3f}")


if __name__ == "__main__":
    main()
