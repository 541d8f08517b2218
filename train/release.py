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

``--decoder turbo`` serves a model trained with Pillow's decoder through libjpeg-turbo and
OpenCV (:func:`wastesort.training.export.with_decoder`): the model's val and test top-1 are
measured through both and recorded; the release is refused if the test top-1 drops.

Example:
    python train/release.py --run runs/lite0_bg
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from wastesort.contract import PreprocessContract
from wastesort.paths import MODELS_DIR, REPO_ROOT
from wastesort.shipped import ShippedModel
from wastesort.training.export import (
    DECODERS,
    ExportError,
    export_run,
    held_out_images,
    load_checkpoint,
    with_decoder,
)
from wastesort.training.logit_adjust import BALANCE, AdjustError, adjust_shipped, report
from wastesort.training.release import decoder_record, install, publish, release_record, tta_record
from wastesort.training.served import record_served, served_record, summary


def stage(
    a: argparse.Namespace, config: dict, model: ShippedModel, held_out: list[Path], contract: PreprocessContract, decoder: dict | None
) -> int:
    """Write every release file of ``a.run`` into ``model``'s (staging) folder; 1 on an error."""
    try:
        export = export_run(a.run, model.onnx, held_out, contract=contract)
        export_run(a.run, model.tta_onnx, held_out, tta=True, contract=contract)
    except ExportError as exc:
        print(f"error: export verification failed: {exc}", file=sys.stderr)
        return 1
    print(f"exported {model.onnx.name} ({model.onnx.stat().st_size / 1e6:.1f} MB): agreement {export['top1_agreement']:.0%}")
    shutil.copy(a.run / "manifest.csv", model.manifest)
    metrics = json.loads((a.run / "metrics.json").read_text())
    adjust = config.get("balance") == BALANCE and not a.no_logit_adjust
    if not adjust:  # else adjust_shipped measures both files once adjusted and decides on those figures
        tta = metrics["tta"] = tta_record(model, a.run)
        print(f"TTA: val {tta['val_plain']:.4f} -> {tta['val_tta']:.4f}, test {tta['test_plain']:.4f} -> {tta['test_tta']:.4f}")
        print(f"TTA kept: {tta['kept']}")
    if decoder:
        metrics["decoder"] = decoder
    metrics["release"] = release_record(a.run, model.net)
    model.metrics.write_text(json.dumps(metrics, indent=2))
    if adjust:
        try:
            report(adjust_shipped(model, Path(config["data"])))
        except AdjustError as exc:
            print(f"error: logit adjustment failed: {exc} (--no-logit-adjust releases the logits as trained)", file=sys.stderr)
            return 1
    else:
        record_served(model, served_record(model, Path(config["data"])))
    print(summary(json.loads(model.metrics.read_text())["served"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder (best.pt, config.json, manifest.csv, metrics.json)")
    p.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where the models/<net>.* files are written")
    p.add_argument("--card", type=Path, default=REPO_ROOT / "MODEL_CARD.md")
    p.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    p.add_argument("--decoder", choices=DECODERS, default=DECODERS[0], help="the preprocessing the release is served with")
    p.add_argument(
        "--no-logit-adjust",
        action="store_true",
        help=f"keep the logits as trained (by default a run trained with --balance {BALANCE} is logit-adjusted)",
    )
    a = p.parse_args(argv)
    config = json.loads((a.run / "config.json").read_text())
    model = ShippedModel(config["model"], folder=a.models_dir)
    held_out = held_out_images(a.run, 1000)
    trained = load_checkpoint(a.run / "best.pt")[1]
    contract = with_decoder(trained, a.decoder)
    decoder = None
    if contract != trained:
        decoder = decoder_record(a.run, trained, contract)
        print(f"decoder {trained.interpolation} -> {contract.interpolation}: " + ", ".join(f"{k} {v}" for k, v in decoder.items()))
        if not decoder["accepted"]:
            print(f"error: test top-1 drops through the {a.decoder} decoder; release refused", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory() as tmp:  # nothing reaches models/ unless every step passes
        staged = ShippedModel(model.net, folder=Path(tmp))
        if stage(a, config, staged, held_out, contract, decoder):
            return 1
        for name in install(staged, model):
            print(f"wrote {model.folder / name}")
    if model.drop_stale_qat():
        print(f"removed {model.qat_onnx.name}: fine-tuned from the previous export (make qat makes one for this export)")
    publish(a.run, model, a.card, a.repository)
    return 0


if __name__ == "__main__":
    sys.exit(main())
