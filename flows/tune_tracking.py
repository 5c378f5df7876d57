"""Recording a tuning study in MLflow: the store made ready for parallel workers, the parent run's
summary, best point and plots. (Each trial's own child run is ``tracking.optuna_mlflow``'s callback.)

This lives in ``flows/`` rather than ``tracking/`` because it reads Optuna objects, and ``tracking/``
does not import Optuna.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import optuna

from flows.objective import params_of
from flows.study import STUDY_DEFINITION_ATTR

if TYPE_CHECKING:
    from tracking.log import MlflowLogger, NullLogger


def prepare_tracking_store() -> None:
    """Check the MLflow store is reachable and, for sqlite, create its tables under a file lock.

    Why the lock: workers started together on a fresh sqlite store would all run MLflow's schema
    migrations at once, and all but one fail ("Online migration expected to match one row").
    """
    import fcntl

    from mlflow import MlflowClient

    from tracking.store import check_reachable, sqlite_path

    uri = check_reachable()
    db = sqlite_path(uri)
    if db is None:
        return
    with open(db.with_name(db.name + ".init-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        MlflowClient(uri).search_experiments(max_results=1)  # creates or migrates the tables


def history_figure(study: optuna.Study):
    """Objective of every finished trial by trial number, with the best-so-far line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    fig, ax = plt.subplots(figsize=(6, 4))
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="tab:blue")
    ax.scatter(
        [t.number for t in pruned],
        [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
        label="pruned (last running value)", color="tab:gray", marker="x",
    )
    best, xs, ys = math.inf, [], []
    for t in done:
        best = min(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"objective ({study.user_attrs.get(STUDY_DEFINITION_ATTR, {}).get('objective', 'bpb')})")
    ax.set_title(f"tuning history: {study.study_name}")
    ax.legend()
    fig.tight_layout()
    return fig


def log_tuning(
    run_logger: MlflowLogger | NullLogger, study: optuna.Study, summary: dict[str, Any], split: dict[str, list[str]]
) -> None:
    """Log the summary, split, best point and the plots (history, λ′/α landscape) to the parent run."""
    run_logger.log_metrics(
        {"best_value": summary["best_value"], **{f"trials_{k.lower()}": v for k, v in summary["trials"].items()}}
    )
    if not run_logger.enabled:
        return
    run_logger.client.log_dict(run_logger.run_id, split, "split.json")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if done:
        run_logger.client.log_dict(run_logger.run_id, summary["best_params"], "best.json")
        run_logger.log_figure(history_figure(study), "plots/tuning_history.png")
        # Trials with stopping="never" have alpha None: plot_landscape draws them in a strip below the α axis.
        run_logger.log_landscape([params_of(t) for t in done], [t.value for t in done], objective=summary["objective"])
