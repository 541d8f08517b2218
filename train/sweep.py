"""Hyperparameter sweep: Optuna TPE + Hyperband over a named search space, stored in an RDB.

Examples:
    python train/sweep.py --data ../shared/data/trashnet --space simplecnn            # CPU budget
    python train/sweep.py --data ../shared/data/trashnet --space simplecnn --budget gpu
    # several workers on one study: run the same command in each, pointed at one database
    python train/sweep.py ... --storage postgresql://user@db/optuna --train-args "--threads 1"
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from wastesort.data import DatasetError
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.sweep import report, study
from wastesort.sweep.objective import Objective
from wastesort.sweep.space import SPACES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_TRASHNET), help="ImageFolder dataset root")
    p.add_argument("--space", choices=sorted(SPACES), default="simplecnn", help="search space")
    p.add_argument("--budget", choices=("cpu", "gpu"), default="cpu", help="cpu: under an hour on 2 cores; gpu: the seed's 50 runs")
    p.add_argument("--study", default=None, help="study name (default: <space>-<budget>)")
    p.add_argument("--out", default=None, help="working folder: trial runs and the default SQLite study (default: runs/sweep/<study>)")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL of the study database (default: sqlite in --out)")
    p.add_argument("--report", default=None, help="report folder (default: docs/sweep/<study>)")
    p.add_argument("--trials", type=int, default=None, help="run cap: finished trials over all workers (default: the budget's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial, Hyperband's maximum resource (default: the budget's)")
    p.add_argument("--train-fraction", type=float, default=None, help="share of the training split per trial (default: the budget's)")
    p.add_argument("--input-size", type=int, default=None, help="input side (SimpleCNN; default: the budget's)")
    p.add_argument("--timeout-min", type=float, default=None, help="stop starting trials after this many minutes")
    p.add_argument("--train-args", default="", help="extra train/train.py flags for every trial, e.g. '--threads 1'")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--report-only", action="store_true", help="write the report of the stored study, run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    space = SPACES[args.space]
    base = space.budgets[args.budget]
    budget = replace(
        base,
        trials=args.trials or base.trials,
        epochs=args.epochs or base.epochs,
        train_fraction=args.train_fraction or base.train_fraction,
        input_size=args.input_size or base.input_size,
    )
    name = args.study or f"{space.name}-{args.budget}"
    out = Path(args.out or f"runs/sweep/{name}")
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.report or f"docs/sweep/{name}")
    folder.mkdir(parents=True, exist_ok=True)
    st = study.open_study(name, args.storage or study.default_storage(out), budget.epochs, args.seed)
    objective = Objective(space, budget, args.data, out, shlex.split(args.train_args))
    if not args.report_only:
        try:
            done = study.run(st, objective, budget.trials, args.timeout_min * 60 if args.timeout_min else None)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"study {name}: {done} finished trials (cap {budget.trials})")
    budget_lines = [
        f"preset `{args.budget}`: run cap {budget.trials} finished trials, at most {budget.epochs} epochs per trial "
        f"(Hyperband: 1 to {budget.epochs} epochs, reduction factor 3), "
        f"{budget.train_fraction:.0%} of the training split per trial, validation split whole",
        f"input: {f'{budget.input_size} px' if budget.input_size else 'searched (resolution)'}; fixed flags: `{' '.join(space.fixed)}`"
        + (f"; extra: `{args.train_args}`" if args.train_args else ""),
        f"sampler: TPE (seed {args.seed}, constant liar); storage: `{args.storage or 'sqlite (study.db in the working folder)'}`",
        f"machine: {one_line(describe())}",
    ]
    rows = report.write_trials_csv(st, space, folder / "trials.csv")
    plots = report.write_plots(st, folder)
    commands = report.best_commands(st, args.data, f"runs/{name}-best", budget.argv()) if study.has_complete(st) else {}
    readme = report.write_readme(st, space, folder, budget_lines, commands, plots)
    print(f"{rows} trials -> {folder / 'trials.csv'}; report {readme}")
    for label, cmd in commands.items():
        print(f"{label}:\n  {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
