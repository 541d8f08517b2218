"""Write MODEL_CARD.md for a shipped model (:mod:`wastesort.training.card`); ``make release``
does this itself. The card is rebuilt from the committed files alone where the release record
keeps every run's configuration, so the runs need not be here. ``--measure-served DATA``
first (re)measures the served file on the split's photos under DATA
(:func:`wastesort.training.served.record_served`: figures with bootstrap intervals, and the
confusion PNG), for a release made before ``make release`` recorded it.

Example:
    python train/model_card.py --onnx models/efficientnet_lite0.onnx --measure-served ../shared/data/trashnet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wastesort.paths import REPO_ROOT
from wastesort.shipped import ShippedModel
from wastesort.training.card import write_card
from wastesort.training.served import record_served, served_record, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, required=True, help="the committed plain export, models/<net>.onnx")
    p.add_argument("--run", type=Path, help="the run it was released from (default: the one its release record names)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "MODEL_CARD.md")
    p.add_argument("--measure-served", type=Path, metavar="DATA", help="re-measure the served file on the photos under DATA first")
    args = p.parse_args(argv)
    metrics = json.loads(args.onnx.with_suffix(".metrics.json").read_text())
    recorded = metrics.get("release", {}).get("run")
    if not args.run and not recorded:
        print(f"error: {args.onnx.name}'s metrics name no release run; pass --run", file=sys.stderr)
        return 1
    run = args.run or Path(recorded)
    if args.measure_served:
        model = ShippedModel(metrics["model"], folder=args.onnx.parent)
        record = served_record(model, args.measure_served)
        record_served(model, record)
        print(summary(record))
    write_card(run, args.onnx, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
