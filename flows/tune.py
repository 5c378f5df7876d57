"""The ``tune`` flow: an Optuna study over SIFT's λ′ and the adaptive-stopping α.

This module composes; each part has its own module, and the public names of all of them stay
importable from here (``flows.tune`` is what the CLI, the Prefect deployment and the tests use):

- ``flows.study``: Optuna storage (default sqlite URL, RDB opening, sqlite write-lock at BEGIN,
  stale-trial retry), creating or resuming a study, and refusing a study with another definition;
- ``flows.objective``: search space, sampling a point, the objective value, the pruning reporter,
  one trial's evaluate config, the tuning/report split of the prompts;
- ``flows.tune_tracking``: the MLflow store made ready for parallel workers and the parent run's
  summary, best point and plots;
- ``flows.preflight``: the checks of the input before anything runs (``preflight_tune``);
- here: the flow itself, its outputs on disk (``best.json``, the splits), the CLI entry, and the
  printed summary.

The design choices (why one scalar objective, why a categorical "never stop", how ``--trials``
counts with several workers) are in those modules' docstrings and ``docs/tuning.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.config import TuneConfig
from flows.preflight import preflight_tune
from sift.atomic import write_json, write_jsonl
from flows.objective import (
    STOPPING_CHOICES,
    PruningReporter,
    best_params,
    make_objective,
    objective_of,
    params_of,
    search_space,
    split_prompts,
    suggest_params,
    trial_config,
)
from flows.study import (
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    STORAGE_ENV,
    STUDY_DEFINITION_ATTR,
    StaleTrialWatchdog,
    check_existing_study,
    default_storage_url,
    index_fingerprint_of,
    open_storage,
    open_study,
    optuna_dir,
    storage_url,
    study_definition,
    study_dir,
)
from flows.trace import STUDY_RUN_ATTR, flow_run_tags, link_flow_run_to_mlflow
from tracking.store import database_url, masked_url
from flows.tune_tracking import log_tuning, prepare_tracking_store

__all__ = [
    # the flow and its CLI entry (this module)
    "tune", "tune_cli", "preflight_tune", "print_tune_summary",
    # flows.study
    "STUDY_DEFINITION_ATTR", "HEARTBEAT_SECONDS", "GRACE_SECONDS", "optuna_dir", "default_storage_url", "study_dir",
    "STORAGE_ENV", "storage_url", "StaleTrialWatchdog",
    "open_storage", "study_definition", "index_fingerprint_of", "open_study", "check_existing_study",
    # flows.objective
    "STOPPING_CHOICES", "search_space", "suggest_params", "params_of", "best_params", "split_prompts",
    "objective_of", "PruningReporter", "trial_config", "make_objective",
]


# ----------------------------------------------------------------------------------------------
# Inputs and outputs on disk


def _load_prompts(config: TuneConfig) -> list[dict]:
    """The evaluate flow's prompts: ``config.prompts`` (default: the held-out prompts), ``limit`` applied."""
    from flows.evaluate import limit_prompts, load_prompts  # late: imports the model stack

    return limit_prompts(load_prompts(config), config.limit, config.skip)


# ----------------------------------------------------------------------------------------------
# The flow


@flow(name="tune")
def tune(config: TuneConfig = TuneConfig()) -> dict[str, Any]:
    """Run ``config.trials`` trials of the study ``config.study`` in this process; return a summary.

    Returns ``{"study", "storage", "objective", "best_params", "best_value", "best_json", "trials"
    (the study's counts per state), "tune_prompt_ids", "report_prompt_ids", "parent_run_id"}``.
    Writes ``<state>/optuna/<study>/best.json`` (and ``config.out``) as ``{"lam": ..., "alpha": ...}``,
    plus ``split.json``, ``tune_prompts.jsonl`` and ``report_prompts.jsonl`` beside it. With
    tracking, one parent run in experiment ``<experiment>-tune`` holds one child run per trial.
    """
    from tracking.log import tracking_run
    from tracking.optuna_mlflow import MLflowTrialLogger

    preflight_tune(config)  # first: a deployment does not pass through the CLI
    logger = get_run_logger()
    url = storage_url(config.storage)  # --storage, else $SIFT_OPTUNA_STORAGE, else the state folder's sqlite
    shown_url = masked_url(url)
    storage = open_storage(url)  # fail fast, before loading prompts or models
    if config.tracking:
        prepare_tracking_store()  # fail fast too, before a study is created

    prompts = _load_prompts(config)
    tune_prompts, report_prompts = split_prompts(prompts, config.tune_fraction, config.seed)
    definition = study_definition(config, tune_prompts, index_fingerprint_of(config))
    study, created = open_study(storage, config.study, definition)
    split = {"tune_prompt_ids": [p["id"] for p in tune_prompts], "report_prompt_ids": [p["id"] for p in report_prompts]}
    out_dir = study_dir(config.study)
    write_json(out_dir / "split.json", split, indent=2)
    write_jsonl(out_dir / "tune_prompts.jsonl", tune_prompts)
    write_jsonl(out_dir / "report_prompts.jsonl", report_prompts)
    if created and config.lam_min <= config.lam <= config.lam_max:
        # The first trial is the configured point, so tuning never ends worse than the defaults.
        start: dict[str, Any] = {"lam": config.lam, "stopping": "never"}
        if config.budget is not None:  # the budgeted search space (objective.search_space): λ′ and sigma's γ
            start = {"lam": config.lam, **({"gamma": config.gamma} if config.allocate == "sigma" else {})}
        elif config.alpha is not None and config.alpha_min <= config.alpha <= config.alpha_max:
            start = {"lam": config.lam, "stopping": "adaptive", "alpha": config.alpha}
        study.enqueue_trial(start)

    with tracking_run(
        config,
        experiment=f"{config.experiment}-tune",
        run_name=f"tune {config.study}",
        enabled=config.tracking,
        params={"storage": shown_url, "tune_prompts": len(tune_prompts), "report_prompts": len(report_prompts)},
        tags={"sift_ttft.flow": "tune", "optuna.study": config.study, **flow_run_tags()},
    ) as run_logger:
        callbacks = []
        if run_logger.enabled:
            callbacks.append(MLflowTrialLogger(run_logger.experiment_id, run_logger.run_id, run_logger.tracking_uri))
            # A trial whose worker died is failed by whichever worker notices: it reaches MLflow from there.
            storage.get_heartbeat_stale_trial_callback().also.append(callbacks[-1])
        trace = link_flow_run_to_mlflow(run_logger)
        if trace:  # the study records which flow run and MLflow run this process was
            study.set_user_attr(STUDY_RUN_ATTR + trace["prefect_flow_run_id"], trace)
        logger.info(
            "study %r in %s: %d trials in this process (%d tuning prompts, %d held out for the report)",
            config.study, shown_url, config.trials, len(tune_prompts), len(report_prompts),
        )
        with StaleTrialWatchdog(study):  # dead workers' trials are failed and re-queued within the bound
            study.optimize(
                make_objective(config, tune_prompts), n_trials=config.trials, n_jobs=config.jobs, callbacks=callbacks
            )

        best = best_params(study)
        best_value = study.best_value if best is not None else math.nan
        best_json = out_dir / "best.json"
        if best is not None:
            write_json(best_json, best, indent=2)
            if config.out is not None:
                write_json(Path(config.out), best, indent=2)
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        summary = {
            "study": config.study,
            "storage": shown_url,
            "objective": config.objective,
            "best_params": best,
            "best_value": best_value,
            "best_json": str(best_json) if best is not None else None,
            "trials": counts,
            **split,
            "parent_run_id": run_logger.run_id,
            "mlflow_run_url": (trace or {}).get("mlflow_run_url"),
        }
        log_tuning(run_logger, study, summary, split)

    logger.info("best %s (objective %.4f) → %s; trials %s", best, best_value, best_json, counts)
    return summary


# ----------------------------------------------------------------------------------------------
# The CLI entry: run, print (the preflight is flows.preflight.preflight_tune)


def print_tune_summary(summary: dict[str, Any]) -> None:
    """Print the best point, where it was written, and the next commands (dashboard, final report)."""
    from rich.console import Console

    console = Console()
    trials = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary["trials"].items()))
    console.print(f"study {summary['study']!r}: {trials} ({summary['objective']} objective)")
    if summary["best_params"] is None:
        console.print("no trial completed yet: no best point.")
        return
    console.print(f"best λ′/α: {summary['best_params']} → objective {summary['best_value']:.4f}")
    out_dir = Path(summary["best_json"]).parent
    console.print(f"written to {summary['best_json']}", soft_wrap=True)
    # The dashboard's SQLAlchemy needs the driver named (postgresql+psycopg://); a password shows as ***.
    console.print(f"dashboard: optuna-dashboard {database_url(summary['storage'])} --host 127.0.0.1", soft_wrap=True)
    console.print(
        f"final report on the held-out prompts: sift-ttft evaluate --prompts {out_dir / 'report_prompts.jsonl'} "
        f"--params {summary['best_json']}",
        soft_wrap=True,
    )
    if summary.get("parent_run_id"):
        console.print(f"MLflow run {summary['parent_run_id']} (one child run per trial): "
                      f"{summary.get('mlflow_run_url') or '`sift-ttft ui`'}", soft_wrap=True)


def tune_cli(config: TuneConfig) -> dict[str, Any]:
    """``sift-ttft tune`` after its preflight and ``flows.cli._start_flow_run`` (which started the temporary
    Prefect server under its lock, with its watchdog): run the flow with the configured task runner (the
    flow checks its input again first, ``preflight_tune``)."""
    from flows.runners import make_task_runner

    return tune.with_options(task_runner=make_task_runner(config))(config=config)
