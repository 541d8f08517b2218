"""Promote a training run to the shipped model in one step (``make release RUN=runs/<name>``).

Writes every ``models/<net>.*`` file from the run: the verified FP32 ONNX export and its
``.export.json`` record, the split manifest, ``metrics.json`` (the run's, plus the TTA and
release records), the served file's val and test figures with bootstrap intervals and its test
confusion matrix (:mod:`wastesort.training.served`); exports the flip-averaged TTA model and keeps
it as ``models/<net>.tta.onnx`` only if it beats the plain model on the validation split
(after the logit adjustment, if any; both figures are recorded either way); logit-adjusts a model trained with the class-weighted loss
(:mod:`wastesort.training.logit_adjust`; ``--no-logit-adjust`` keeps the logits as trained) and
re-measures its val and test figures; removes a QAT copy (``make qat``) made from the
previous export; regenerates ``MODEL_CARD.md``; and, when ``net`` is
the default network, regenerates ``model_repository/``.

A ``make adapt`` folder (``OUT/model.onnx`` and its report) is promoted as it is: its calibrated
file replaces ``models/<net>.onnx`` (no TTA file), TrashNet's val and test are measured afresh,
and the adaptation's report goes into ``metrics.json`` and the card.

``--decoder turbo`` serves a model trained with Pillow's decoder through libjpeg-turbo and
OpenCV (:func:`wastesort.training.export.with_decoder`): the model's val and test top-1 are
measured through both and recorded; the release is refused if the test top-1 drops.

Example:
    python train/release.py --run runs/lite0_bg
    python train/release.py --run runs/my_site     # made by make adapt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastesort.paths import MODELS_DIR, REPO_ROOT
from wastesort.training.export import DECODERS
from wastesort.training.logit_adjust import BALANCE
from wastesort.training.release import ReleaseError, release_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--run",
        type=Path,
        required=True,
        help="a training run (best.pt, config.json, ...) or a make adapt folder (model.onnx, report.json)",
    )
    p.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where the models/<net>.* files are written")
    p.add_argument("--card", type=Path, default=REPO_ROOT / "MODEL_CARD.md")
    p.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    p.add_argument("--decoder", choices=DECODERS, default=DECODERS[0], help="the preprocessing the release is served with")
    p.add_argument(
        "--no-logit-adjust",
        action="store_true",
        help=f"keep the logits as trained (by default a run trained with --balance {BALANCE} is logit-adjusted)",
    )
    args = p.parse_args(argv)
    try:
        release_run(args.run, args.models_dir, args.card, args.repository, args.decoder, not args.no_logit_adjust)
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
