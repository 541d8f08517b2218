"""Output-ensemble check (experiments/soup/README.md, "Averaging outputs"): the mean ``PROBABILITIES``
of ONNX files through the serving preprocessing, top-1 and trash F1 per split named on the
command line (default val). Seed 2's export is the scratch release the README names; a file that
is not there is left out with its combinations.

Example:
    python experiments/soup/output_ensemble.py val test
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from wastesort.contract import PreprocessContract
from wastesort.evaluation import classification_metrics, split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.shipped import DEFAULT_NET, PROBABILITIES, ShippedModel

SERVED = ShippedModel(DEFAULT_NET)
FILES = {
    "served_tta": SERVED.tta_onnx,
    "served_plain": SERVED.onnx,
    "s1_plain": REPO_ROOT / "experiments/soup/long_s1" / SERVED.onnx.name,
    "s2_plain": Path("/tmp/rel_s2/models") / SERVED.onnx.name,
}
ENSEMBLES = {
    "served_tta+s2_plain": ["served_tta", "s2_plain"],
    "served_plain+s2_plain": ["served_plain", "s2_plain"],
    "served_tta+s1+s2": ["served_tta", "s1_plain", "s2_plain"],
}


def main(splits: list[str]) -> None:
    contract = PreprocessContract.from_onnx(str(SERVED.onnx))
    for split in splits:
        x, y = split_tensors(SERVED.split(split, DEFAULT_TRASHNET), contract)
        probs = {k: OnnxClassifier(f).batched(PROBABILITIES, x) for k, f in FILES.items() if f.is_file()}
        for name, parts in {**{k: [k] for k in probs}, **ENSEMBLES}.items():
            if all(p in probs for p in parts):
                m = classification_metrics(y, np.mean([probs[p] for p in parts], 0).argmax(1), contract.labels)
                right = round(m["accuracy"] * len(y))
                print(f"{split} {name:24s} top-1 {m['accuracy']:.4f} ({right}/{len(y)}) trash F1 {m['per_class']['trash']['f1']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["val"])
