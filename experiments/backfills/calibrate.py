"""Calibrate the committed model once (``make release`` does it for every new release): the
temperature and typicality written into its plain, TTA and QAT files, the thresholds chosen on
val, ``metrics.json``'s ``confidence`` record, then the model card and the repository
regenerated as a release does.

Example:
    python experiments/backfills/calibrate.py --net efficientnet_lite0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.training.calibrate import CalibrationError, calibrate_shipped, summary
from wastesort.training.release import publish


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default=DEFAULT_NET)
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    args = parser.parse_args(argv)
    model = ShippedModel(args.net)
    try:
        print(summary(calibrate_shipped(model, args.data)))
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = json.loads(model.metrics.read_text()).get("release", {}).get("run")
    publish(Path(run) if run else None, model, REPO_ROOT / "MODEL_CARD.md", REPO_ROOT / "model_repository")
    return 0


if __name__ == "__main__":
    sys.exit(main())
