#!/usr/bin/env python3
"""Robustness report: bad-input matrix, soak, injected faults, against the real tritonserver.

    python reliability/run.py                  # make reliability: 10-minute soak, about 15 minutes
    python reliability/run.py --soak-minutes 1 # make reliability-quick

Starts its own servers (127.0.0.1, free ports, under the supervisor, stopped by PID) on
``--repository`` (default: the model repository ``make serve`` serves), and writes to
``reliability/results/<host>/``: ``report.md`` (the three tables), ``summary.json``,
``soak.png`` (memory and latency over time), the server logs; then replaces the results
section of ``docs/reliability.md`` with ``report.md`` (``--no-doc`` to leave it).

Photos: the real TrashNet photos when ``--data`` (default ``../shared/data/trashnet``) exists,
else synthetic ones (said in the report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastesort.reliability.workflow import ReliabilitySettings, run_reliability

DEFAULTS = ReliabilitySettings()


def parse_args(argv: list[str] | None) -> ReliabilitySettings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=DEFAULTS.net, help="committed model under models/ (default: %(default)s)")
    parser.add_argument("--repository", type=Path, default=DEFAULTS.repository)
    parser.add_argument("--data", type=Path, default=DEFAULTS.data, help="photos for the soak and the client runs")
    parser.add_argument("--soak-minutes", type=float, default=DEFAULTS.soak_minutes)
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http", help="soak protocol (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=DEFAULTS.batch, help="images per soak request (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=DEFAULTS.concurrency, help="soak requests in flight (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="default: reliability/results/<host>")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/reliability.md")
    return ReliabilitySettings(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    return 0 if run_reliability(parse_args(argv)) else 1


if __name__ == "__main__":
    sys.exit(main())
