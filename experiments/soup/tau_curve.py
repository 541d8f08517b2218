"""The logit adjustment's τ, checked on val (experiments/soup/README.md, "τ of the logit adjustment").

The served TTA file is the mean of the plain file's ``PROBABILITIES`` on the image and its
mirror, and both carry the τ = 1 offsets in the head's bias
(:mod:`wastesort.training.logit_adjust`). Adding ``(τ - 1) * offsets`` to the plain file's
``LOGITS`` in each pass gives the served model at any other τ. Prints top-1 and trash F1 per τ
for each split named on the command line (default val).

Example:
    python experiments/soup/tau_curve.py val test
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.special import softmax

from wastesort.evaluation import classification_metrics, split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import DEFAULT_NET, LOGITS, ShippedModel
from wastesort.training.logit_adjust import recorded_offsets

SERVED = ShippedModel(DEFAULT_NET)
TAUS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def main(splits: list[str]) -> None:
    offsets = recorded_offsets(SERVED.onnx)
    if offsets is None:
        raise SystemExit(f"{SERVED.onnx} carries no logit adjustment")
    clf = OnnxClassifier(SERVED.onnx)
    for split in splits:
        x, y = split_tensors(SERVED.split(split, DEFAULT_TRASHNET), clf.contract)
        passes = [clf.batched(LOGITS, x), clf.batched(LOGITS, np.ascontiguousarray(x[..., ::-1]))]
        for tau in TAUS:
            probs = np.mean([softmax(z + (tau - 1) * offsets, axis=1) for z in passes], 0)
            m = classification_metrics(y, probs.argmax(1), clf.labels)
            right = round(m["accuracy"] * len(y))
            print(f"{split} tau {tau:4.2f} top-1 {m['accuracy']:.4f} ({right}/{len(y)}) trash F1 {m['per_class']['trash']['f1']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["val"])
