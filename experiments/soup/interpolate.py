"""Top-1 along the line between two models (the experiment behind experiments/soup/README.md).

A and B are what ``make soup`` takes (a run folder or an export of one Lite network, on one
split): each is loaded as the soup loads an ingredient (:func:`~wastesort.training.soup.load_ingredient`:
its folded network, without the release's logit adjustment) and each row is
:func:`~wastesort.training.soup.average_weights` of the two with weights ``1 - t`` and ``t``,
scored as the soup scores (PyTorch, the serving preprocessing, the release's logit adjustment
when they were trained with the class-weighted loss) on the split's val and test photos: plain,
and flip-averaged (TTA). ``t = k / m`` for a soup of ``k`` models and ``m - k`` others is that
count-weighted soup, before its BatchNorms are re-expanded on training photos (``make soup``
does that; this script does not, so a row can differ from the released soup by a photo).
Analysis only: ``train/soup.py`` chooses on val alone.

Example (A: the committed soup; B: a new lineage's last run):
    python experiments/soup/interpolate.py --a models/efficientnet_lite0.onnx --b runs/lite0_plain_s1_224_bgft \
        --steps 6 --out experiments/soup/interpolation_third.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from scipy.special import softmax

from wastesort.evaluation import classification_metrics
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import DEFAULT_NET
from wastesort.training import evaluate, pipeline
from wastesort.training.logit_adjust import BALANCE
from wastesort.training.soup import average_weights, check_compatible, load_ingredient


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, required=True, help="run folder or export (t = 0)")
    p.add_argument("--b", type=Path, required=True, help="run folder or export on the same split (t = 1)")
    p.add_argument("--net", default=DEFAULT_NET)
    p.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="the dataset the manifests name")
    p.add_argument("--steps", type=int, default=4, help="intervals between A and B")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    ends = [load_ingredient(path, args.net, args.data) for path in (args.a, args.b)]
    check_compatible(ends)
    first = ends[0]
    classes = first.contract.labels
    offsets = first.release_offsets()
    tensors = {s: pipeline.eval_tensor(first.splits[s], first.contract, f"{s} images") for s in ("val", "test")}
    rows = []
    for k in range(args.steps + 1):
        t = k / args.steps
        model = average_weights([e.model for e in ends], [1 - t, t])
        row = [f"{t:.2f}"]
        for x, y in tensors.values():
            logits = evaluate.predict(model, x) + offsets
            flipped = evaluate.predict(model, torch.flip(x, dims=[3])) + offsets
            tta = softmax(logits, axis=1) + softmax(flipped, axis=1)
            for pred in (logits.argmax(1), tta.argmax(1)):
                m = classification_metrics(y.numpy(), pred, classes)
                row += [f"{m['accuracy']:.4f}", f"{m['per_class']['trash']['f1']:.3f}"]
        rows.append(row)
        print(" | ".join(row), flush=True)
    header = ["t (0: A, 1: B)"] + [f"{s} {kind} {metric}" for s in tensors for kind in ("plain", "TTA") for metric in ("top-1", "trash F1")]
    adjusted = ", logit-adjusted" if first.balance == BALANCE else ""
    lines = [
        f"Interpolation between `{args.a}` (A) and `{args.b}` (B): folded weights averaged as (1 - t) A + t B{adjusted},",
        "BatchNorms not re-expanded; PyTorch, serving preprocessing, "
        f"{len(tensors['val'][1])} val and {len(tensors['test'][1])} test photos (`experiments/soup/interpolate.py`).",
        f"Machine: {one_line(describe())}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
