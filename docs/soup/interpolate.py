"""Top-1 along the line between two exports' folded weights (the experiment behind docs/soup/README.md).

Each row mixes the ONNX initialisers of export A and export B as ``(1 - t) A + t B`` (both
logit-adjusted with A's recorded offsets: the adjustment is a bias shift, so it mixes exactly),
and measures the result with ONNX Runtime through the serving preprocessing on the shipped split's
val and test photos: plain, and flip-averaged (TTA). Analysis only: ``train/soup.py`` chooses on
val alone.

Example (A: the release before the soup, from git history, with its manifest beside it):
    mkdir -p /tmp/prev && for f in onnx manifest.csv; do
        git show db60c77:models/efficientnet_lite0.$f > /tmp/prev/efficientnet_lite0.$f; done
    python train/export.py --run runs/lite0_long_224_bgft --out /tmp/long.onnx
    python docs/soup/interpolate.py --a /tmp/prev/efficientnet_lite0.onnx --b /tmp/long.onnx --out docs/soup/interpolation.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from scipy.special import softmax

from wastesort.contract import PreprocessContract
from wastesort.inference import OnnxClassifier
from wastesort.perf.machine import describe, one_line
from wastesort.preprocess import preprocess_files
from wastesort.shipped import LOGITS, ShippedModel
from wastesort.training.evaluate import classification_metrics
from wastesort.training.logit_adjust import adjust_onnx, recorded, recorded_offsets


def mix(a: onnx.ModelProto, b: onnx.ModelProto, t: float) -> onnx.ModelProto:
    """``a`` with every floating-point initialiser replaced by ``(1 - t) a + t b`` (same graph)."""
    out = onnx.ModelProto()
    out.CopyFrom(a)
    for init, other in zip(out.graph.initializer, b.graph.initializer, strict=True):
        x, y = numpy_helper.to_array(init), numpy_helper.to_array(other)
        if init.name != other.name or x.shape != y.shape:
            raise ValueError(f"the exports differ: {init.name} {x.shape} against {other.name} {y.shape}")
        if x.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array(((1 - t) * x.astype(np.float64) + t * y).astype(x.dtype), init.name))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, required=True, help="logit-adjusted export with its manifest beside it (models/<net>.onnx)")
    p.add_argument("--b", type=Path, required=True, help="export of another run on the same split (adjusted with A's offsets if not yet)")
    p.add_argument("--steps", type=int, default=4, help="intervals between A and B")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    shipped = ShippedModel(a.a.stem, folder=a.a.parent)
    contract = PreprocessContract.from_onnx(str(a.a))
    with tempfile.TemporaryDirectory() as tmp:
        b_path = a.b if recorded(a.b) else adjust_onnx(a.b, recorded_offsets(a.a), Path(tmp) / "b.onnx")
        proto_a, proto_b = onnx.load(str(a.a)), onnx.load(str(b_path))
        splits = {s: shipped.split(s) for s in ("val", "test")}
        images = {s: preprocess_files([x.path for x in v], contract) for s, v in splits.items()}
        labels = {s: np.array([x.label for x in v]) for s, v in splits.items()}
        rows = []
        for k in range(a.steps + 1):
            t = k / a.steps
            path = Path(tmp) / f"mix{k}.onnx"
            onnx.save(mix(proto_a, proto_b, t), str(path))
            clf = OnnxClassifier(path)
            row = [f"{t:.2f}"]
            for s in ("val", "test"):
                logits = clf.batched(LOGITS, images[s])
                flipped = clf.batched(LOGITS, np.ascontiguousarray(images[s][..., ::-1]))
                tta = softmax(logits, axis=1) + softmax(flipped, axis=1)
                for pred in (logits.argmax(1), tta.argmax(1)):
                    m = classification_metrics(labels[s], pred, contract.labels)
                    row += [f"{m['accuracy']:.4f}", f"{m['per_class']['trash']['f1']:.3f}"]
            rows.append(row)
            print(" | ".join(row), flush=True)
    header = ["t (0: A, 1: B)"] + [
        f"{s} {kind} {metric}" for s in ("val", "test") for kind in ("plain", "TTA") for metric in ("top-1", "trash F1")
    ]
    lines = [
        f"Interpolation between `{a.a}` (A) and `{a.b}` (B), folded weights mixed as (1 - t) A + t B, logit-adjusted;",
        f"ONNX Runtime, serving preprocessing, {len(labels['val'])} val and {len(labels['test'])} test photos.",
        f"Machine: {one_line(describe())}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
