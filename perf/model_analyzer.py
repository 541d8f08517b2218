"""Triton Model Analyzer on the CPU service, and its pick against the hand-tuned configuration.

    python perf/model_analyzer.py [--net efficientnet_lite0] [--data ../shared/data/trashnet]
                                  [--out perf/results/<host>/model_analyzer]

(``make model-analyzer``, which first installs Model Analyzer into ``.venv-analyzer``.)

1. Model Analyzer profiles the service's default ensemble (INT8 when ``make build`` installed
   it) with real test-split JPEG bytes: its Optuna search (``--mode optuna``, ``--trials``) over
   the composing models' instance counts, ``max_batch_size`` and queue delays with dynamic
   batching (``--mode quick``: its hill climb, no queue delays), p99 within ``--budget-ms``
   (:mod:`wastesort.perf.model_analyzer` owns the config and the reading of its results).
2. Its summary report, its results table, the config it ran and its log go to ``--out``.
3. If its best configuration is not the hand-tuned one, both are served in turn (fresh
   servers, alternating, ``--rounds``) and swept with the project's perf_analyzer over HTTP
   and gRPC; ``model_analyzer.md`` has both, the ratio and which one the project keeps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

import yaml

from wastesort import machine as mach
from wastesort.data import DatasetError
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.perf import analyzer as pa
from wastesort.perf import model_analyzer as ma
from wastesort.shipped import DEFAULT_NET, IMAGE_BYTES, ShippedModel
from wastesort.triton.config import marked_default
from wastesort.triton.default import choose
from wastesort.triton.naming import default_ensembles
from wastesort.triton.server import MODEL_REPOSITORY, free_port


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default=DEFAULT_NET)
    p.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--out", type=Path, default=None, help="default: perf/results/<host>/model_analyzer")
    p.add_argument("--budget-ms", type=float, default=ma.Search.p99_budget_ms, help="p99 latency budget")
    p.add_argument("--mode", choices=("optuna", "quick"), default=ma.Search.mode, help="Model Analyzer's search mode")
    p.add_argument(
        "--trials", type=int, nargs=2, metavar=("MIN", "MAX"), default=(ma.Search.min_trials, ma.Search.max_trials), help="optuna's trials"
    )
    p.add_argument("--timeout-min", type=float, default=60.0, help="Model Analyzer's whole profile run")
    p.add_argument("--rounds", type=int, default=2, help="side-by-side rounds of hand-tuned vs pick")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="side-by-side levels")
    p.add_argument("--measurement-ms", type=int, default=3000)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = ma.unavailable_reason() or pa.unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    ready = [e for e in default_ensembles(args.net) if (args.repository / e / "config.pbtxt").is_file()]
    if not ready:
        print(f"error: no ensemble of {args.net} in {args.repository} (make repository)", file=sys.stderr)
        return 2
    try:
        test = ShippedModel(args.net).split("test", args.data)
    except DatasetError as exc:
        print(f"error: {exc} (the profile runs on real test-split photos: --data)", file=sys.stderr)
        return 2
    machine = mach.describe()
    out = args.out or Path("perf/results") / mach.host_name() / "model_analyzer"
    out.mkdir(parents=True, exist_ok=True)
    search = ma.Search(mode=args.mode, p99_budget_ms=args.budget_ms, min_trials=args.trials[0], max_trials=args.trials[1])
    ensemble = choose(ready, partial(marked_default, args.repository))
    print(f"machine: {mach.one_line(machine)}\nprofiling {ensemble} with Model Analyzer (log: {out / 'model_analyzer.log'})")
    with tempfile.TemporaryDirectory(prefix="wastesort-ma-") as scratch:
        work = Path(scratch)
        input_data = work / "input_jpeg_bytes.json"  # dataset photos: kept out of the committed folder
        input_data.write_text(json.dumps(pa.bytes_input_data([s.path.read_bytes() for s in test[:64]], IMAGE_BYTES)))
        prepared = work / "repository"
        composing = ma.prepare_repository(args.repository, prepared, ensemble)
        ports = {name: free_port() for name in ("http", "grpc", "metrics")}
        config = ma.analyzer_config(prepared, ensemble, composing, work, input_data, ports, search)
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copy(work / "config.yaml", out / "config.yaml")
        log = out / "model_analyzer.log"
        log.unlink(missing_ok=True)
        try:
            ma.run(["profile", "-f", str(work / "config.yaml")], log, pa.analyzer_env(), args.timeout_min * 60)
        except ma.ModelAnalyzerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        export = Path(config["export_path"])
        shutil.copy(export / ma.INFERENCE_CSV, out / ma.INFERENCE_CSV.name)
        shutil.copy(export / "reports" / "summaries" / ensemble / "result_summary.html", out / "result_summary.html")
        measured = ma.with_queue_delays(ma.read_results(export), Path(config["output_model_repository_path"]))
        ranked = ma.best_per_config(measured, args.budget_ms)
        if not ranked:
            print(f"error: no configuration met p99 <= {args.budget_ms:g} ms", file=sys.stderr)
            return 1
        pick = None if ranked[0].is_default else ranked[0]
        results, kept = [], f"the {ma.HAND_TUNED} configuration (Model Analyzer's best is the {ma.HAND_TUNED} one)"
        if pick is not None:
            print(f"{ma.PICK}: {ma.describe(pick)}; serving it against the {ma.HAND_TUNED} configuration")
            repositories = {ma.HAND_TUNED: prepared, ma.PICK: work / "picked", ma.PICK_INSTANCES: work / "pick_instances"}
            ma.pick_repository(prepared, Path(config["output_model_repository_path"]), pick, ensemble, repositories[ma.PICK])
            ma.with_instances(prepared, repositories[ma.PICK], repositories[ma.PICK_INSTANCES])
            capacity = {label: ma.batch_capacity(repo, ensemble) for label, repo in repositories.items()}
            settings = pa.SweepSettings(measurement_ms=args.measurement_ms)
            results = ma.compare(
                repositories, ensemble, input_data, args.concurrency, settings, args.budget_ms, args.rounds, work / "compare"
            )
            kept = ma.verdict(results, capacity)
    text = ma.render(mach.one_line(machine), ensemble, search, ranked, pick, results, kept)
    (out / "model_analyzer.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
