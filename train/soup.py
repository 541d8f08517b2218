"""Average the weights of fine-tuned EfficientNet-Lite models into one (a greedy model soup).

Ingredients are runs (folders with ``best.pt``) or exports (``models/<net>.onnx``) of one
network, trained on one split with one preprocessing; the result is a run folder that
``make release RUN=...`` promotes like any other. Recipe and contract:
:mod:`wastesort.training.soup`; figures: ``experiments/soup.md``.

Example:
    python train/soup.py --ingredients models/efficientnet_lite0.onnx runs/lite0_long_224_bgft --out runs/lite0_soup
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from wastesort.data import DatasetError
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import DEFAULT_NET
from wastesort.training.export import averaged_models
from wastesort.training.soup import RECIPES, SoupError, make_soup

SCRIPT = "train/soup.py"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ingredients", type=Path, nargs="+", required=True, help="run folders (best.pt) or ONNX exports")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--model", default=DEFAULT_NET, help="the network every ingredient is")
    p.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="ImageFolder root the manifests' paths are relative to")
    p.add_argument("--recipe", choices=RECIPES, default=RECIPES[0], help="greedy: add by val top-1 while it does not drop; uniform: all")
    args = p.parse_args(argv)
    command = sys.argv[1:] if argv is None else argv
    try:
        metrics = make_soup(args.ingredients, args.model, args.data, args.out, args.recipe, shlex.join(["python", SCRIPT, *command]))
    except (DatasetError, SoupError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    soup = metrics["soup"]
    for step in soup["steps"]:
        name = "all" if step["ingredient"] is None else soup["ingredients"][step["ingredient"]]["path"]
        print(f"{'kept   ' if step['kept'] else 'dropped'} {name}: soup val {step['score']:.4f}")
    val, test = metrics["val"]["accuracy"], metrics["test"]["accuracy"]
    print(f"soup of {averaged_models(soup)} models: val top-1 {val:.4f}, test top-1 {test:.4f} (as trained) -> {args.out}")
    print(f"next: make release RUN={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
