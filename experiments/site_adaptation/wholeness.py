"""Which simulated-site photos show their item whole, and how right adapted files are on those
and on the rest.

The site's composites use the mask that cuts each item from TrashNet's white board; where it
misses the white or clear parts of an item, the site shows scattered fragments. A photo is
*whole* when the largest 8-connected piece of its binary mask holds at least
``WHOLE_SHARE`` of the mask's area (computed from the TrashNet original; no model involved).

    python experiments/site_adaptation/wholeness.py --site /tmp/site/val \\
        --model 10_protocol2=/tmp/runs/site25/model.onnx --json experiments/site_adaptation/wholeness.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from wastesort.contract import PreprocessContract
from wastesort.evaluation import split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.preprocess import decode
from wastesort.training.adapt import scan_site
from wastesort.training.background import foreground_mask

#: The share of the mask's area its largest piece must hold for the photo to count as whole.
WHOLE_SHARE = 0.9


def largest_share(original: Path) -> float:
    """The share of the item mask's area in its largest 8-connected piece (0 without a mask)."""
    photo = np.asarray(decode(original.read_bytes()), np.uint8)
    mask = foreground_mask(torch.from_numpy(photo.copy()).permute(2, 0, 1).contiguous())
    if mask is None:
        return 0.0
    binary = mask.numpy() > 0.5
    pieces, count = ndimage.label(binary, structure=np.ones((3, 3), bool))
    if count == 0:
        return 0.0
    return float(np.bincount(pieces.ravel())[1:].max() / binary.sum())


def top1(right: np.ndarray) -> dict:
    """Top-1 with its binomial standard error."""
    p = float(right.mean()) if len(right) else float("nan")
    return {"top1": p, "se": math.sqrt(p * (1 - p) / len(right)) if len(right) else float("nan"), "photos": int(len(right))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, required=True, help="an ImageFolder written by make_site.py")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="the TrashNet originals")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=ONNX", help="an adapted file to score")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    samples = scan_site(args.site).samples
    shares = np.array([largest_share(args.data / s.path.parent.name / s.path.name) for s in samples])
    whole = shares >= WHOLE_SHARE
    result = {
        "site": str(args.site),
        "whole_share": WHOLE_SHARE,
        "photos": {"all": len(samples), "whole": int(whole.sum()), "fragmented": int((~whole).sum())},
        "models": {},
        "machine": one_line(describe()),
    }
    inputs: dict[PreprocessContract, tuple[np.ndarray, np.ndarray]] = {}  # adapted files share the release's contract
    for spec in args.model:
        name, path = spec.split("=", 1)
        contract = PreprocessContract.from_onnx(path)
        if contract not in inputs:
            inputs[contract] = split_tensors(samples, contract, name)
        x, y = inputs[contract]
        right = OnnxClassifier(path).probabilities(x).argmax(1) == y
        result["models"][name] = {"all": top1(right), "whole": top1(right[whole]), "fragmented": top1(right[~whole])}
        print(name, json.dumps(result["models"][name]))
    result["fragmented_files"] = sorted(f"{s.path.parent.name}/{s.path.name}" for s, w in zip(samples, whole, strict=True) if not w)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
