"""Log every finished Optuna trial as an MLflow run.

A small callback of our own: optuna-integration's ``MLflowCallback`` is deprecated (removed in Optuna
6) and uses MLflow's fluent, process-global active-run stack, which is unsafe when trials run in
parallel threads (``--jobs``). This one writes through an explicit ``MlflowClient`` and never touches
the active run, so any number of threads or processes can log trials of one study side by side.

The callback is duck-typed on Optuna's ``Study``/``FrozenTrial`` (``study_name``, ``number``,
``state.name``, ``params``, ``values``, ``intermediate_values``, ``user_attrs``, ``datetime_*``), so
``tracking/`` does not import Optuna.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tracking.reaper import owner_tags

log = logging.getLogger(__name__)

# Optuna trial state → MLflow run status. A pruned trial was stopped on purpose: KILLED, not FAILED.
_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _millis(dt) -> Optional[int]:
    return int(dt.timestamp() * 1000) if dt is not None else None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


class MLflowTrialLogger:
    """Optuna callback ``(study, frozen_trial) -> None`` that records the trial as one MLflow run.

    The run (named ``<study>/trial-<number>``, a child of ``parent_run_id`` when given) holds:
    params = the trial's sampled parameters; metrics = ``objective`` (or ``objective_0..`` for
    several objectives; complete trials only), ``running_objective`` at step i for every ``trial.report(value, i)``, and
    every finite numeric user attribute; params also get the non-numeric user attributes; tags
    ``optuna.study``, ``optuna.trial``, ``optuna.state`` and the owner tags of ``tracking.reaper``. Status: COMPLETE → FINISHED,
    PRUNED → KILLED, FAIL → FAILED. Start/end times are the trial's own.

    A tracking error is logged as a warning and swallowed: losing one trial's MLflow record must
    not abort a study whose results are safe in the Optuna storage anyway.
    """

    def __init__(
        self,
        experiment_id: str,
        parent_run_id: Optional[str] = None,
        tracking_uri: Optional[str] = None,
        extra_tags: Optional[dict[str, str]] = None,
    ) -> None:
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.client = MlflowClient(tracking_uri)
        self.extra_tags = dict(extra_tags or {})
        self.run_ids: dict[int, str] = {}  # trial number → MLflow run id (for tests and the flow)

    def __call__(self, study, trial) -> None:
        try:
            self.run_ids[trial.number] = self._log(study, trial)
        except Exception as exc:  # noqa: BLE001 — see the class docstring
            log.warning("could not log trial %s of study %r to MLflow: %s", trial.number, study.study_name, exc)

    def _log(self, study, trial) -> str:
        tags = {
            "optuna.study": study.study_name,
            "optuna.trial": str(trial.number),
            "optuna.state": trial.state.name,
            **owner_tags(),  # a crash between create_run and set_terminated leaves a run the reaper can end
            **self.extra_tags,
        }
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(
            self.experiment_id,
            start_time=_millis(trial.datetime_start),
            tags=tags,
            run_name=f"{study.study_name}/trial-{trial.number}",
        )
        run_id = run.info.run_id
        now = _millis(trial.datetime_complete) or _millis(trial.datetime_start) or 0

        params = {name: str(value) for name, value in trial.params.items()}
        metrics: list[Metric] = []
        # A pruned trial carries its last running value as "value": not an objective, so not logged as one.
        values = (trial.values or []) if trial.state.name == "COMPLETE" else []
        for i, value in enumerate(values):
            if _is_number(value):
                name = "objective" if len(values) == 1 else f"objective_{i}"
                metrics.append(Metric(name, float(value), now, 0))
        for step, value in sorted(trial.intermediate_values.items()):
            if _is_number(value):
                metrics.append(Metric("running_objective", float(value), now, int(step)))
        for name, value in trial.user_attrs.items():
            if _is_number(value):
                metrics.append(Metric(name, float(value), now, 0))
            elif name not in params and isinstance(value, (str, bool, type(None))):
                params[name] = str(value)

        # MLflow caps one log_batch at 1000 metrics / 100 params; trials stay far below both.
        self.client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, v[:6000]) for k, v in params.items()],
            tags=[RunTag("optuna.params", ", ".join(f"{k}={v}" for k, v in trial.params.items()))],
        )
        self.client.set_terminated(run_id, status=_RUN_STATUS.get(trial.state.name, "FAILED"), end_time=now or None)
        return run_id

