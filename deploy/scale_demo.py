#!/usr/bin/env python3
"""Several tritonserver replicas behind HAProxy, with Prometheus, on loopback (``make scale-demo``).

    python deploy/scale_demo.py                 # 2 replicas, about 6 minutes
    python deploy/scale_demo.py --replicas 3 --images 1500

Writes ``deploy/results/<host>/summary.json`` and ``summary.md`` (the logs of the run under
``logs/`` beside them, not committed) and replaces the results section of ``docs/scale-out.md`` (``--no-doc`` to leave it). What it runs:
:mod:`wastesort.scale.demo`. Photos: the real TrashNet photos at ``--data`` when present,
else synthetic ones (said in the summary).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from wastesort.machine import host_name
from wastesort.paths import DEFAULT_TRASHNET, REPO_ROOT
from wastesort.reliability.images import photo_files
from wastesort.reliability.report import update_doc
from wastesort.scale.demo import Settings, run_demo
from wastesort.scale.report import MARKERS, tables

DOC = REPO_ROOT / "docs" / "scale-out.md"


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=defaults.replicas)
    parser.add_argument("--images", type=int, default=defaults.images, help="photos per failover and drain run (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--quick", action="store_true", help="skip perf_analyzer: routing, failover and drain only")
    parser.add_argument("--out", type=Path, default=None, help="default: deploy/results/<host>")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/scale-out.md")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (one is killed, another drained)")
    out = args.out or REPO_ROOT / "deploy" / "results" / host_name()
    work = out / "logs"  # server, HAProxy, Prometheus and perf_analyzer logs, client output (not committed)
    if work.exists():
        shutil.rmtree(work)
    photos, source = photo_files(args.data, work, args.images)
    summary = run_demo(Settings(replicas=args.replicas, images=len(photos), quick=args.quick), out, work, photos, source)
    report = tables(summary)
    (out / "summary.md").write_text(report)
    print(report)
    if not args.no_doc and not update_doc(DOC, report, MARKERS):
        print(f"note: {DOC} has no result markers; left as it is")


if __name__ == "__main__":
    main()
