"""Prune and cluster a trained classifier (seed 001): sensitivity scan, magnitude pruning,
k-means weight clustering, each fine-tuned, then the accuracy gate and the size table.

Examples:
    python train/compress.py                         # the committed default model's training run
    python train/compress.py --run runs/simplecnn --report /tmp/compression.md

Variants that pass the gate are installed into the model repository as ``<net>_onnx_pruned``
and ``<net>_onnx_clustered`` (with their ensembles) when the run is the source of the committed
``models/<net>.onnx``; ONNX Runtime runs them no faster (see the report).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from wastesort.compression import report
from wastesort.compression.workflow import CLUSTERED, PRUNED, Settings, compress, save_json
from wastesort.data import DatasetError
from wastesort.inference import OnnxClassifier
from wastesort.machine import describe, one_line
from wastesort.paths import REPO_ROOT, RUNS_DIR, shown
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.triton.config import remove_variant, write_variant
from wastesort.triton.naming import variant_name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help=f"run with best.pt and command.txt (default: {DEFAULT_NET}'s source run)")
    p.add_argument("--data", default=None, help="photo root (default: the run's)")
    p.add_argument("--work", type=Path, default=RUNS_DIR / "compress", help="working folder (ONNX files, fine-tune runs)")
    p.add_argument("--report", type=Path, default=Path("docs/compression.md"), help="Markdown report (PNG and JSON beside it)")
    p.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    p.add_argument("--clusters", type=int, default=d.clusters, help="k-means values per layer (16-256)")
    p.add_argument("--max-drop", type=float, default=d.max_drop, help="val top-1 a layer's ratio may cost alone (fraction)")
    p.add_argument("--scan-images", type=int, default=d.scan_images)
    p.add_argument("--min-weights", type=int, default=d.min_weights)
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shipped_run = ShippedModel(DEFAULT_NET).source_run
    run = args.run or shipped_run
    if run is None or not (run / "best.pt").is_file():
        print(f"error: no training run with best.pt at {run} (--run runs/<name>)", file=sys.stderr)
        return 2
    s = Settings(
        clusters=args.clusters,
        max_drop=args.max_drop,
        scan_images=args.scan_images,
        min_weights=args.min_weights,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
    )
    try:
        result = compress(run, args.work, s, args.data)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    install = shipped_run is not None and run.resolve() == shipped_run.resolve() and result.net == DEFAULT_NET
    for stage, variant in zip(result.stages[1:], (PRUNED, CLUSTERED), strict=True):
        name = variant_name(result.net, variant)
        if install and stage.passed:
            write_variant(args.repository, result.net, name, stage.onnx, OnnxClassifier(stage.onnx).contract, "onnxruntime")
            stage.installed = True
        elif install:
            remove_variant(args.repository, name)
            stage.reason = "REFUSED: " + stage.reason
        elif not stage.passed:
            stage.reason = "REFUSED: " + stage.reason
        print(f"{stage.name}: test top-1 {stage.test_top1:.4f}, {'installed as ' + name if stage.installed else stage.reason}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    plot = args.report.with_name(args.report.stem + "_sensitivity.png")
    report.plot_scan(result, plot)
    result.run = shown(run)
    command = shlex.join(["python", "train/compress.py", *(argv if argv is not None else sys.argv[1:])])
    args.report.write_text(report.markdown(result, one_line(describe()), plot.name, command))
    save_json(result, args.report.with_suffix(".json"))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
