"""Train a waste classifier on an ImageFolder dataset (``DATA/<class>/<image>.jpg``).

Example (the committed model; see MODEL_CARD.md for the exact command):
    python train/train.py --data ../shared/data/trashnet --model simplecnn --out runs/simplecnn
"""

from __future__ import annotations

import shlex
import sys

from wastesort.data import DatasetError
from wastesort.training.cli import TRAIN_SCRIPT, parse_args
from wastesort.training.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, resume = parse_args(argv)
    try:
        trainer = Trainer(cfg, resume=resume)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not resume:
        (trainer.out / "command.txt").write_text(shlex.join(["python", TRAIN_SCRIPT, *argv]) + "\n")
    trainer.fit()
    trainer.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
