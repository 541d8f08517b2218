"""Write MODEL_CARD.md for a shipped model (:mod:`wastesort.training.card`); ``make release``
does this itself.

Example:
    python train/model_card.py --run runs/mobilenet_v3_small --onnx models/mobilenet_v3_small.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastesort.training.card import write_card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("MODEL_CARD.md"))
    a = p.parse_args(argv)
    write_card(a.run, a.onnx, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
