"""Adapt the shipped model to a site from its own labelled photos (``make adapt DATA=site/ OUT=runs/site``).

The site folder is an ImageFolder with any subset of the six classes
(``site/glass/*.jpg``, ``site/plastic/*.jpg``, ...): the photos a person sorted, for example the
ones ``client/classify.py --save-unsure`` saved. Writes ``OUT/model.onnx`` (calibrated, the
release's contract) and ``OUT/report.{md,json}`` (the site's val photos and TrashNet's test
photos before and after: top-1, coverage, accuracy among the answered).

Example:
    python train/adapt.py --data my_site/ --out runs/my_site
    python train/evaluate.py --model runs/my_site/model.onnx --data my_other_site_photos/ --json scores.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import DEFAULT_NET
from wastesort.training.adapt import AdaptConfig, AdaptError, adapt_site

DEFAULTS = AdaptConfig()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the site's labelled photos: DATA/<class>/<photo>")
    p.add_argument("--out", type=Path, required=True, help="folder for model.onnx and the report")
    p.add_argument("--trashnet", type=Path, default=DEFAULT_TRASHNET, help="TrashNet photos to replay (the committed split's)")
    p.add_argument("--net", default=DEFAULT_NET, help="committed model under models/")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--first-trained-block", type=int, default=DEFAULTS.first_trained_block, help="earlier blocks stay frozen")
    p.add_argument("--replay", type=float, default=DEFAULTS.replay, help="TrashNet photos replayed per site training photo")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing, help="on the site photos' cross-entropy")
    args = p.parse_args(argv)
    config = AdaptConfig(
        epochs=args.epochs,
        lr=args.lr,
        first_trained_block=args.first_trained_block,
        replay=args.replay,
        seed=args.seed,
        label_smoothing=args.label_smoothing,
    )
    try:
        report = adapt_site(args.data, args.out, args.trashnet, args.net, config)
    except AdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out / 'model.onnx'} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
