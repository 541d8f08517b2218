"""Write MODEL_CARD.md for a shipped model (:mod:`wastesort.training.card`); ``make release``
does this itself. The card is rebuilt from the committed files alone where the release record
keeps every run's configuration, so the runs need not be here.

Example:
    python train/model_card.py --onnx models/efficientnet_lite0.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wastesort.paths import REPO_ROOT
from wastesort.training.card import write_card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, required=True, help="the committed plain export, models/<net>.onnx")
    p.add_argument("--run", type=Path, help="the run it was released from (default: the one its release record names)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "MODEL_CARD.md")
    args = p.parse_args(argv)
    metrics = json.loads(args.onnx.with_suffix(".metrics.json").read_text())
    recorded = metrics.get("release", {}).get("run")
    if not args.run and not recorded:
        print(f"error: {args.onnx.name}'s metrics name no release run; pass --run", file=sys.stderr)
        return 1
    run = args.run or Path(recorded)
    write_card(run, args.onnx, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
