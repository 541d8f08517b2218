"""Protocol 2's table: each run's adapt report (``<run>.json``) with its score on the held-out
val-split site (``<run>.site_val.json``, written by ``train/evaluate.py --json``), and its top-1 on the
held-out photos that show their item whole and on the fragmented ones (``wholeness.json``).

Usage: ``python experiments/site_adaptation/protocol2_table.py 10_protocol2 11_fifty ... > protocol2.md``
(run names relative to this folder). The standard error is the binomial one of the held-out top-1.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent


def share(figures: dict | None) -> str:
    """``top-1 ± se (photos)``, or a dash for a run ``wholeness.py`` did not score."""
    return f"{figures['top1']:.3f} ± {figures['se']:.3f} ({figures['photos']})" if figures else "-"


def row(name: str, report: dict, wholeness: dict) -> str:
    """One run's row: photos, time, held-out site top-1 with its standard error (all, whole,
    fragmented), TrashNet's test top-1."""
    held_out = json.loads((HERE / f"{name}.site_val.json").read_text())
    top1, n = held_out["accuracy"], held_out["images"]
    photos = report["photos"]
    before, after = report["before"]["trashnet_test"]["accuracy"], report["after"]["trashnet_test"]["accuracy"]
    return (
        f"| [{name}]({name}.json) | {photos['site_train']} + {photos['site_val']} | {photos['replay']} | "
        f"{report['config']['first_trained_block']} | {report['config']['epochs']} | {report['seconds']:.0f} | "
        f"{report['after']['site_val']['accuracy']:.3f} | {top1:.3f} ± {math.sqrt(top1 * (1 - top1) / n):.3f} ({n}) | "
        f"{held_out['macro_f1']:.3f} | {share(wholeness.get(name, {}).get('whole'))} | "
        f"{share(wholeness.get(name, {}).get('fragmented'))} | {before:.4f} → {after:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run names: <run>.json and <run>.site_val.json in this folder")
    args = parser.parse_args()
    reports = {name: json.loads((HERE / f"{name}.json").read_text()) for name in args.runs}
    machines = sorted({report["machine"] for report in reports.values()})
    print("| run | site photos (train + calibration) | replayed | first trained block | epochs | seconds | "
          "site calibration top-1 | held-out site top-1 (photos) | held-out macro F1 | whole items | fragmented items | "
          "TrashNet test top-1 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    scored = HERE / "wholeness.json"
    wholeness = json.loads(scored.read_text())["models"] if scored.exists() else {}
    for name in args.runs:
        print(row(name, reports[name], wholeness))
    print(f"\nMachine: {'; '.join(machines)}. Written by `protocol2_table.py`.")


if __name__ == "__main__":
    main()
