"""Fine-tune the committed model's weights for INT8 (quantisation-aware, by self-distillation).

Writes ``models/<net>.qat.onnx`` (FP32 weights that ``make build`` quantises when the net's INT8
settings say ``qat_weights``) and ``models/<net>.qat.json`` (schedule, time, machine, the export
it came from). The FP32 model served and the accuracy gate's reference stay ``models/<net>.onnx``.
Recipe and limits: :mod:`wastesort.training.qat`; figures: ``experiments/int8_settings/README.md``.

Example (about 4 minutes per epoch on a 2-core CPU):
    python train/qat.py --data ../shared/data/trashnet --epochs 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wastesort.data import DatasetError
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.training.qat import QatConfig, fine_tune


def main(argv: list[str] | None = None) -> int:
    defaults = QatConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--net", default=DEFAULT_NET, help="committed model under models/")
    p.add_argument("--data", type=Path, default=DEFAULT_TRASHNET, help="ImageFolder root the manifest's paths are relative to")
    p.add_argument("--epochs", type=float, default=defaults.epochs)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--calibration-images", type=int, default=300, help="training images that set the activation ranges")
    args = p.parse_args(argv)
    model = ShippedModel(args.net)
    try:
        record = fine_tune(model, args.data, QatConfig(args.epochs, args.lr, args.batch_size, args.seed), args.calibration_images)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    print(f"wrote {model.qat_onnx} and {model.qat_record}; next: make build (the sweep: python experiments/int8_settings/int8_sweep.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
