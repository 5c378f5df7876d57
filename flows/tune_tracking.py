"""Recording a tuning study in MLflow: the store made ready for parallel workers, the parent run's
summary, best point and plots. (Each trial's own child run is ``tracking.optuna_mlflow``'s callback.)

This lives in ``flows/`` rather than ``tracking/`` because it reads Optuna objects, and ``tracking/``
does not import Optuna.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from flows.objective import params_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


# PED-ANOVA (Optuna 5's default importance evaluator) contrasts the best ceil(10 %) of the complete
# trials with all of them; below 11 complete trials that best set is a single trial, and importances
# drawn from one point are noise.
MIN_TRIALS_FOR_IMPORTANCES = 11
# A slice panel plots the objective against one parameter: it needs two distinct values of it.
MIN_VALUES_FOR_SLICE = 2
# The intermediate-values plot has one legend entry per trial; past this many it is taller than the plot.
MAX_TRIALS_IN_LEGEND = 10


def _draw(make: Callable[[], Any], finish: Callable[[Figure], None] | None = None) -> Figure:
    """Call ``make()``, one of ``optuna.visualization.matplotlib``'s plots, and return its drawn figure.

    Why the contexts: those plots are "experimental" and warn on every call (we pin Optuna, so the
    interface cannot move under us); and they ``plt.style.use("ggplot")``, which would restyle every
    later figure of the process (the landscape, the evaluate flow's plots) if not undone. ``finish``
    (labels, legend, layout) and the drawing happen inside the style, so lazily made ticks, grid and
    legend get it too.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: flows run on servers and in CI
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.filterwarnings(
            "ignore", message=r"optuna\.visualization\.matplotlib\..* is experimental",
            category=optuna.exceptions.ExperimentalWarning,
        )
        axes = make()
        figure = (axes.flat[0] if isinstance(axes, np.ndarray) else axes).figure  # plot_slice: one Axes per param
        if finish is not None:
            finish(figure)
        figure.canvas.draw()
    return figure


def _history(study_name: str) -> Callable[[Figure], None]:
    def finish(figure: Figure) -> None:
        ax = figure.axes[0]
        ax.set_title(f"tuning history: {study_name}")
        # Optuna puts the legend right of the axes, where a plain savefig (MLflow's log_figure) cuts it off.
        ax.legend(loc="upper right")
        figure.tight_layout()

    return finish


def _running_objective(target_name: str, n_trials: int) -> Callable[[Figure], None]:
    def finish(figure: Figure) -> None:
        from matplotlib.ticker import MaxNLocator

        ax = figure.axes[0]
        ax.set(xlabel="tuning prompt (step 0 = the first)", ylabel=f"running {target_name}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are prompts: no step 0.25
        if n_trials <= MAX_TRIALS_IN_LEGEND:
            ax.legend(loc="upper right", fontsize=8)
        elif ax.get_legend() is not None:
            ax.get_legend().remove()  # curves that end early are pruned trials; the numbers would not fit
        figure.tight_layout()

    return finish


def tuning_figures(study: optuna.Study, objective: str) -> Iterator[tuple[str, Figure]]:
    """The study's Optuna plots as ``(artifact file, figure)``, one open figure at a time.

    - ``plots/tuning_history.png``: each complete trial's objective by trial number, best so far;
    - ``plots/intermediate_values.png``: the running objective after each tuning prompt, for
      complete, pruned and (other workers') running trials: what the pruner judged; a pruned trial's
      curve ends early;
    - ``plots/slice.png`` (2+ complete trials): objective against each parameter that took 2+ values;
    - ``plots/param_importances.png`` (``MIN_TRIALS_FOR_IMPORTANCES``+ complete trials).

    Nothing is yielded without a complete trial. No contour plot: ``tracking.plots.plot_landscape``
    is the joint (λ′, α) view, and it also shows the stopping="never" trials (they have no α, so a
    contour drops them) and marks the best point; a contour would interpolate a few points. The
    caller closes each figure (``run_logger.log_figure`` does).
    """
    from optuna.visualization import matplotlib as optuna_plots

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return
    target_name = f"objective ({objective})"
    yield "plots/tuning_history.png", _draw(
        lambda: optuna_plots.plot_optimization_history(study, target_name=target_name), _history(study.study_name)
    )
    shown = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    reported = [t for t in study.get_trials(deepcopy=False, states=shown) if t.intermediate_values]
    if reported:
        yield "plots/intermediate_values.png", _draw(
            lambda: optuna_plots.plot_intermediate_values(study), _running_objective(target_name, len(reported))
        )
    varied = [name for name in dict.fromkeys(p for t in done for p in t.params)
              if len({t.params[name] for t in done if name in t.params}) >= MIN_VALUES_FOR_SLICE]
    if varied:
        yield "plots/slice.png", _draw(lambda: optuna_plots.plot_slice(study, params=varied, target_name=target_name))
    if len(done) >= MIN_TRIALS_FOR_IMPORTANCES:
        yield "plots/param_importances.png", _draw(
            lambda: optuna_plots.plot_param_importances(study, target_name=target_name), lambda f: f.tight_layout()
        )


def log_tuning(
    run_logger: MlflowLogger | NullLogger, study: optuna.Study, summary: dict[str, Any], split: dict[str, list[str]]
) -> None:
    """Log the summary, split, best point and the plots (``tuning_figures``, λ′/α landscape) to the parent run."""
    run_logger.log_metrics(
        {"best_value": summary["best_value"], **{f"trials_{k.lower()}": v for k, v in summary["trials"].items()}}
    )
    if not run_logger.enabled:
        return
    run_logger.client.log_dict(run_logger.run_id, split, "split.json")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if done:
        run_logger.client.log_dict(run_logger.run_id, summary["best_params"], "best.json")
        for artifact_file, figure in tuning_figures(study, summary["objective"]):
            run_logger.log_figure(figure, artifact_file)
        # Trials with stopping="never" have alpha None: plot_landscape draws them in a strip below the α axis.
        run_logger.log_landscape([params_of(t) for t in done], [t.value for t in done], objective=summary["objective"])
