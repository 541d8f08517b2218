"""Logit-adjust a committed model trained with the class-weighted loss (``--balance loss``).

``make release`` does this for new releases; this applies the same step
(:func:`wastesort.training.logit_adjust.adjust_shipped`) to a model released before it did:
both ONNX files of ``models/<net>``, its metrics and confusion matrix re-measured; the QAT copy
made from the previous export is removed (``make qat`` makes a new one); ``model_repository/``
is regenerated for the default network and, with ``--run`` (the run it was released from),
``MODEL_CARD.md``, as ``make release`` does.

Example:
    python experiments/backfills/adjust_logits.py --net efficientnet_lite0 --run runs/lite0_plain_224_bgft
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastesort.data import DatasetError
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.training.logit_adjust import AdjustError, adjust_shipped, report
from wastesort.training.release import publish


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--net", default=DEFAULT_NET, help="committed model under models/")
    p.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="the dataset root its manifest is relative to")
    p.add_argument("--run", type=Path, help="the run it was released from: regenerate MODEL_CARD.md")
    p.add_argument("--card", type=Path, default=REPO_ROOT / "MODEL_CARD.md")
    p.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    args = p.parse_args(argv)
    model = ShippedModel(args.net)
    try:
        report(adjust_shipped(model, args.data))
    except (AdjustError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if model.drop_stale_qat():
        print(f"removed {model.qat_onnx.name}: made from the unadjusted export (make qat makes one for this export)")
    publish(args.run, model, args.card, args.repository)
    return 0


if __name__ == "__main__":
    sys.exit(main())
