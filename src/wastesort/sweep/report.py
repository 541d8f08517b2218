"""The committed report of one study: ``trials.csv``, the seed's correlation table, Optuna's
parameter importances, PNG plots and a ``README.md`` that states the budget.

Correlation (the table seed 000 published from its sweep dashboard): Pearson's r between each
parameter and the trial's best validation accuracy over every finished trial, complete or
pruned (a pruned trial counts with the best accuracy it reached before it was stopped). A
numeric parameter enters as its value (log10 for log-scaled ones); a categorical one as one
0/1 column per choice (``conv_activation=mish``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.importance import FanovaImportanceEvaluator  # noqa: E402
from optuna.visualization import matplotlib as ovm  # noqa: E402

from wastesort.sweep.objective import ATTR_ARGV, ATTR_BEST, ATTR_EPOCHS, train_command  # noqa: E402
from wastesort.sweep.space import SearchSpace  # noqa: E402
from wastesort.sweep.study import FINISHED  # noqa: E402

#: Plot file -> Optuna's matplotlib plotting function.
PLOTS = {
    "optimization_history.png": ovm.plot_optimization_history,
    "intermediate_values.png": ovm.plot_intermediate_values,
    "parallel_coordinate.png": ovm.plot_parallel_coordinate,
    "param_importances.png": ovm.plot_param_importances,
}


def best_val(trial: optuna.trial.FrozenTrial) -> float | None:
    """Best validation accuracy a trial reached (complete: its value; pruned: its best report)."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return trial.value
    return trial.user_attrs.get(ATTR_BEST, max(trial.intermediate_values.values(), default=None))


def write_trials_csv(study: optuna.Study, space: SearchSpace, path: Path) -> int:
    """One row per trial in any state; returns the row count."""
    trials = study.get_trials(deepcopy=False)
    names = list(space.distributions)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "state", "epochs_run", "best_val_acc", "duration_s", *names])
        for t in trials:
            acc = best_val(t)
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
            w.writerow(
                [
                    t.number,
                    t.state.name,
                    t.user_attrs.get(ATTR_EPOCHS, len(t.intermediate_values)),
                    "" if acc is None else f"{acc:.4f}",
                    "" if seconds is None else f"{seconds:.0f}",
                    *(_fmt(t.params.get(n, "")) for n in names),
                ]
            )
    return len(trials)


@dataclass(frozen=True)
class Correlation:
    column: str
    r: float
    trials: int


def correlations(study: optuna.Study, space: SearchSpace) -> list[Correlation]:
    """Pearson's r of every parameter column with best val accuracy, strongest first."""
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if best_val(t) is not None]
    acc = np.array([best_val(t) for t in trials], dtype=float)
    columns: dict[str, np.ndarray] = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            for choice in dist.choices:
                columns[f"{name}={choice}"] = np.array([float(t.params[name] == choice) for t in trials])
        elif isinstance(dist, FloatDistribution | IntDistribution):
            values = np.array([float(t.params[name]) for t in trials])
            columns[f"log10({name})" if dist.log else name] = np.log10(values) if dist.log else values
    out = []
    for column, values in columns.items():
        if len(trials) > 2 and values.std() > 0 and acc.std() > 0:
            out.append(Correlation(column, float(np.corrcoef(values, acc)[0, 1]), len(trials)))
    return sorted(out, key=lambda c: -abs(c.r))


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances over complete trials (empty with fewer than two, or when every
    complete trial scored the same: fANOVA has no variance to explain)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        return optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except RuntimeError as exc:
        print(f"importances: none ({exc})")
        return {}


def write_plots(study: optuna.Study, folder: Path) -> list[str]:
    """Each of :data:`PLOTS` that the study has enough trials for; returns the files written."""
    written = []
    for name, plot in PLOTS.items():
        try:
            ax = plot(study) if plot is not ovm.plot_param_importances else plot(study, evaluator=FanovaImportanceEvaluator(seed=0))
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two complete trials
            print(f"{name}: not drawn ({exc})")
            continue
        fig = (ax[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.set_size_inches(10, 6)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=80)
        plt.close(fig)
        written.append(name)
    return written


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not math.isnan(value) else str(value)


def write_readme(
    study: optuna.Study, space: SearchSpace, folder: Path, budget_lines: list[str], commands: dict[str, str], plots: list[str]
) -> Path:
    """``folder/README.md``: budget, counts, best trial and its commands, correlation and
    importance tables, the plots."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        minutes = (max(ends) - min(starts)).total_seconds() / 60
        budget_lines = [*budget_lines, f"wall time: {minutes:.1f} min from the first trial's start to the last one's end"]
    lines = [f"# Sweep `{study.study_name}` ({space.name} space)", "", "## Budget", "", *[f"- {b}" for b in budget_lines], ""]
    lines += ["## Trials", "", "| state | trials |", "|---|---|", *[f"| {k} | {v} |" for k, v in counts.items() if v], ""]
    lines += ["Every trial with its parameters: [`trials.csv`](trials.csv).", ""]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines += [f"## Best trial: #{best.number}, val top-1 {best.value:.4f}", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in best.params.items()]
        lines += ["", *[f"{label}:\n\n```\n{cmd}\n```\n" for label, cmd in commands.items()]]
    corr = correlations(study, space)
    lines += ["## Correlation with val accuracy", "", f"Pearson's r over {corr[0].trials if corr else 0} finished trials "]
    lines[-1] += "(pruned ones with the best accuracy they reached); categorical parameters one column per choice."
    lines += ["", "| parameter | r |", "|---|---|", *[f"| {c.column} | {c.r:+.2f} |" for c in corr], ""]
    imp = importances(study)
    lines += ["## Parameter importances (fANOVA, complete trials)", "", "| parameter | importance |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in imp.items()] + [""]
    if plots:
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path


def best_commands(study: optuna.Study, data: str, out: str, budget_argv: list[str]) -> dict[str, str]:
    """The best trial's exact ``train/train.py`` command, and the same without the sweep budget."""
    argv = list(study.best_trial.user_attrs[ATTR_ARGV])
    budget_flags = set(budget_argv[0::2])  # Budget.argv() is flag, value pairs
    full = [a for i, a in enumerate(argv) if a not in budget_flags and (i == 0 or argv[i - 1] not in budget_flags)]
    return {"reproduce the best trial": train_command(argv, data, out), "train it at full budget": train_command(full, data, out)}
