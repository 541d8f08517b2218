"""Cap the typicality's flattening in the committed files at ``MAX_EXCESS`` (once; new
calibrations write the cap themselves).

The first calibration divided the logits of very atypical photos by up to ``exp(30)``: their
PROBABILITIES rounded to exactly 1/6 each in float32, so the served top-1 label became the first
class (cardboard) while LOGITS still held the network's answer. This rewrites the cap's one
constant in the plain, TTA and QAT files, checks on TrashNet's val and test photos and on the
test photos with replaced backgrounds that every unsure decision is unchanged and that
PROBABILITIES now give LOGITS' top-1, records that, names the rewritten export in the QAT
record, and regenerates the model card and the repository as a release does.

Example:
    python experiments/backfills/cap_flattening.py --net efficientnet_lite0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from wastesort.confidence import TYPICALITY_PREFIX
from wastesort.confidence import read as read_confidence
from wastesort.contract import PreprocessContract
from wastesort.evaluation import split_tensors
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.shipped import DEFAULT_NET, IMAGES, LOGITS, PROBABILITIES, ShippedModel, sha256
from wastesort.training.background import proxy_tensor
from wastesort.training.calibrate import MAX_EXCESS
from wastesort.training.release import publish

CAP = f"{TYPICALITY_PREFIX}most"


def outputs(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    parts = [session.run([LOGITS, PROBABILITIES], {IMAGES: x[i : i + 64]}) for i in range(0, len(x), 64)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def recap(path: Path) -> float | None:
    """Set the cap of ``path`` to :data:`MAX_EXCESS`; returns the old cap (``None``: no typicality)."""
    proto = onnx.load(str(path))
    found = [t for t in proto.graph.initializer if t.name == CAP]
    if not found:
        return None
    old = float(numpy_helper.to_array(found[0]))
    found[0].CopyFrom(numpy_helper.from_array(np.array(MAX_EXCESS, np.float32), CAP))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default=DEFAULT_NET)
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--record", type=Path, default=Path(__file__).with_name("cap_flattening.json"))
    args = parser.parse_args(argv)
    model = ShippedModel(args.net)
    contract = PreprocessContract.from_onnx(str(model.onnx))
    test = model.split("test", args.data)
    sets = {s: split_tensors(model.split(s, args.data), contract, s) for s in ("val", "test")}
    sets["replaced"] = (proxy_tensor([s.path for s in test], contract), sets["test"][1])
    qat_current = model.qat_problem() is None
    record: dict = {"machine": one_line(describe()), "cap": MAX_EXCESS, "files": {}}
    for path in (model.onnx, model.tta_onnx, model.qat_onnx):
        if not path.is_file():
            continue
        threshold = read_confidence(path).threshold
        before = {name: outputs(path, x) for name, (x, _) in sets.items()}
        old = recap(path)
        if old is None:
            continue
        entry: dict = {"old_cap": old}
        for name, (x, _) in sets.items():
            logits, probabilities = outputs(path, x)
            old_logits, old_probabilities = before[name]
            entry[name] = {
                "photos": len(x),
                "decisions_changed": int(((probabilities.max(1) >= threshold) != (old_probabilities.max(1) >= threshold)).sum()),
                "labels_off_logits_before": int((old_probabilities.argmax(1) != old_logits.argmax(1)).sum()),
                "labels_off_logits_after": int((probabilities.argmax(1) != logits.argmax(1)).sum()),
            }
            if entry[name]["decisions_changed"] or entry[name]["labels_off_logits_after"]:
                print(f"error: {path.name} on {name}: {entry[name]}", file=sys.stderr)
                return 1
        record["files"][path.name] = entry
        print(path.name, json.dumps(entry))
    if qat_current:  # the QAT record names the export it was fine-tuned from: the rewritten one
        qat = json.loads(model.qat_record.read_text())
        model.qat_record.write_text(json.dumps(qat | {"source_sha256": sha256(model.onnx)}, indent=2) + "\n")
    args.record.write_text(json.dumps(record, indent=2) + "\n")
    run = json.loads(model.metrics.read_text()).get("release", {}).get("run")
    publish(Path(run) if run else None, model, REPO_ROOT / "MODEL_CARD.md", REPO_ROOT / "model_repository")
    return 0


if __name__ == "__main__":
    sys.exit(main())
