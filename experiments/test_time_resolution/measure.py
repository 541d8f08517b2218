"""Is the served input size the best size at test time? (the experiment behind experiments/test_time_resolution/README.md)

The model (a run folder or an export, loaded as :func:`~wastesort.training.soup.load_ingredient`
loads a soup ingredient: its folded network, the release's logit adjustment added back) is
scored on its split's val and test photos, in PyTorch, through the serving preprocessing with the
contract's side replaced by each of ``--sides`` (the same decoder, DCT draft rule and resize as
served, so a row is what a release at that side would serve):

* each side alone, and with its mirror (flip TTA, as ``make release`` builds it);
* the probabilities averaged over every side, and over every side and its mirror (multi-scale TTA);
* with ``--recalibrate``, each side again after every BatchNorm's running statistics were
  re-estimated at that side on ``--recalibration-photos`` training photos (serving
  preprocessing, batches of :data:`RECALIBRATION_BATCH`, cumulative average): the test-time half of FixRes (Touvron et
  al., 2019), which corrects the apparent object size that random-resized-crop training shifts.

Analysis only: nothing here changes what is served. A test-time change would earn a release
only by winning on val (``make release`` keeps TTA by that rule); the test columns are the check.

Example (the committed model):
    python experiments/test_time_resolution/measure.py --model models/efficientnet_lite0.onnx \
        --sides 224 240 256 288 --recalibrate --out experiments/test_time_resolution/table.md
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax
from torch import nn

from wastesort.evaluation import classification_metrics
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET, shown
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.training import evaluate, pipeline
from wastesort.training.rebuild import reexpand_batchnorms, statistics_sample
from wastesort.training.soup import Ingredient, load_ingredient

#: The class whose F1 the accurate-model issue sets a target for.
TRASH = "trash"
SPLITS = ("val", "test")
#: Photos per forward pass while the BatchNorm statistics are re-estimated.
RECALIBRATION_BATCH = 32


def recalibrated(ingredient: Ingredient, train_at_side: torch.Tensor, statistics: torch.Tensor) -> nn.Module:
    """A copy of the ingredient's network whose BatchNorms (re-expanded around ``statistics``,
    training photos at the served side) carry running statistics re-estimated on
    ``train_at_side``; only the BatchNorms run in train mode (cumulative average), in eval mode out."""
    model = reexpand_batchnorms(copy.deepcopy(ingredient.model), statistics)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        for start in range(0, len(train_at_side), RECALIBRATION_BATCH):
            model(train_at_side[start : start + RECALIBRATION_BATCH])
    return model.eval()


def probabilities(model: nn.Module, x: torch.Tensor, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of the adjusted logits for ``x`` and for its mirror image."""
    return tuple(softmax(evaluate.predict(model, view) + offsets, axis=1) for view in (x, torch.flip(x, dims=[3])))


def scores(p: dict[str, np.ndarray], labels: dict[str, np.ndarray], classes: tuple[str, ...]) -> list[str]:
    """Per split: top-1 (with the count right), trash F1, and for val the mean negative log-likelihood."""
    cells = []
    for split in SPLITS:
        y, prob = labels[split], p[split]
        m = classification_metrics(y, prob.argmax(1), classes)
        cells += [f"{m['accuracy']:.4f} ({int(round(m['accuracy'] * len(y)))})", f"{m['per_class'][TRASH]['f1']:.3f}"]
        if split == "val":
            cells.append(f"{-np.mean(np.log(prob[np.arange(len(y)), y] + 1e-12)):.4f}")
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ShippedModel().onnx, help="run folder or export")
    p.add_argument("--net", default=DEFAULT_NET)
    p.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="the dataset the manifest names")
    p.add_argument("--sides", type=int, nargs="+", default=[224, 256, 288])
    p.add_argument("--recalibrate", action="store_true", help="also re-estimate the BatchNorm statistics at each side")
    p.add_argument("--recalibration-photos", type=int, default=752, help="training photos (evenly spaced) for --recalibrate")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    ingredient = load_ingredient(args.model, args.net, args.data)
    served, classes = ingredient.contract, ingredient.contract.labels
    offsets = ingredient.release_offsets()
    train = ingredient.splits["train"]
    recal_photos = statistics_sample(train, args.recalibration_photos)
    statistics = pipeline.eval_tensor(statistics_sample(train), served, "statistics photos")[0] if args.recalibrate else None
    labels: dict[str, np.ndarray] = {}
    views: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    recal: dict[int, dict[str, np.ndarray]] = {}
    for side in args.sides:
        contract = replace(served, height=side, width=side)
        tensors = {s: pipeline.eval_tensor(ingredient.splits[s], contract, f"{s} at {side} px") for s in SPLITS}
        labels = {s: y.numpy() for s, (_, y) in tensors.items()}
        views[side] = {s: probabilities(ingredient.model, x, offsets) for s, (x, _) in tensors.items()}
        if args.recalibrate:
            model = recalibrated(ingredient, pipeline.eval_tensor(recal_photos, contract, f"train at {side} px")[0], statistics)
            recal[side] = {s: probabilities(model, x, offsets)[0] for s, (x, _) in tensors.items()}
    rows: list[tuple[str, dict[str, np.ndarray]]] = []
    for side in args.sides:
        mark = " (served)" if (side, side) == (served.height, served.width) else ""
        rows.append((f"{side} px{mark}", {s: views[side][s][0] for s in SPLITS}))
        rows.append((f"{side} px + mirror", {s: (views[side][s][0] + views[side][s][1]) / 2 for s in SPLITS}))
    if len(args.sides) > 1:
        every = ", ".join(str(s) for s in args.sides)
        rows.append((f"mean over {every} px", {s: np.mean([views[d][s][0] for d in args.sides], axis=0) for s in SPLITS}))
        rows.append((f"mean over {every} px + mirrors", {s: np.mean([v for d in args.sides for v in views[d][s]], axis=0) for s in SPLITS}))
    rows += [(f"{side} px, BatchNorms re-estimated at {side} px", recal[side]) for side in recal]
    header = ["test-time input", "val top-1", "val trash F1", "val NLL", "test top-1", "test trash F1"]
    table = [[name, *scores(prob, labels, classes)] for name, prob in rows]
    for row in table:
        print(" | ".join(row), flush=True)
    lines = [
        f"`{shown(args.model)}` ({args.net}, served at {served.width}x{served.height} px) at other test-time sides: PyTorch, the serving",
        f"preprocessing at each side, the release's logit adjustment; {len(labels['val'])} val and {len(labels['test'])} test photos",
        "(`experiments/test_time_resolution/measure.py`"
        + (f"; BatchNorm statistics re-estimated on {len(recal_photos)} training photos)." if args.recalibrate else ")."),
        f"Machine: {one_line(describe())}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in table),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
