"""The study: TPE (the Bayesian sampler) with Optuna's Hyperband pruner (early termination on
per-epoch validation accuracy), stored in an RDB so a sweep resumes after a crash and several
workers (processes or machines sharing one database server) fill the same study.

A worker that dies mid-trial stops sending heartbeats; the next worker to start a trial marks
it failed and :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` re-queues its parameters once.
The run cap counts finished (complete or pruned) trials across every worker.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

# heartbeats and the retry callback are "experimental" in Optuna 5; they are what we rely on
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

#: Trial states that count against the run cap.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S, GRACE_S = 30, 120


def default_storage(out: Path) -> str:
    """SQLite file inside the sweep's working folder."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def open_study(name: str, storage: str, epochs: int, seed: int = 0) -> optuna.Study:
    """Create or load study ``name`` in ``storage`` (any SQLAlchemy URL) to maximise
    validation accuracy. Hyperband's resource is the epoch: from 1 to ``epochs``, keeping a
    third at each rung."""
    rdb = RDBStorage(
        storage,
        heartbeat_interval=HEARTBEAT_S,
        grace_period=GRACE_S,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
    )
    return optuna.create_study(
        study_name=name,
        storage=rdb,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3),
        load_if_exists=True,
    )


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run(study: optuna.Study, objective, cap: int, timeout_s: float | None = None) -> int:
    """Run trials until ``cap`` trials have finished in the study (all workers together) or
    ``timeout_s`` passes; returns how many finished. A failing trial is recorded as failed
    and the sweep goes on."""
    if finished(study) < cap:
        study.optimize(
            objective,
            timeout=timeout_s,
            callbacks=[MaxTrialsCallback(cap, states=FINISHED)],
            catch=(RuntimeError, ValueError),
            gc_after_trial=True,
        )
    return finished(study)


def has_complete(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
