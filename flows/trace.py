"""Links between a Prefect flow run, its MLflow run and (for ``tune``) its Optuna study.

- MLflow parent run → Prefect: tags ``prefect.flow_run_id``, ``prefect.flow_run_name`` and, when a Prefect
  UI is known (``PREFECT_UI_URL``, derived by Prefect from ``PREFECT_API_URL`` for a real server),
  ``prefect.flow_run_url``. A CLI run on its temporary server has no lasting URL: the id is still there,
  and ``prefect server start`` on the same PREFECT_HOME shows the run under it.
- Prefect flow run → MLflow: a link artifact (key ``mlflow-run``) to the run's page in the MLflow UI: the
  tracking server's own UI for an ``http(s)://`` store, else ``sift-ttft ui``'s (``LOCAL_UI_URL``).
- Optuna study → both: one user attribute per tune process, ``sift_ttft.run.<flow run id>`` =
  ``{"prefect_flow_run_id", "prefect_flow_run_url", "mlflow_run_id", "mlflow_run_url"}`` (one key per
  process, so concurrent workers never overwrite each other's record).
"""

from __future__ import annotations

from typing import Any, Optional

FLOW_RUN_ID_TAG, FLOW_RUN_NAME_TAG, FLOW_RUN_URL_TAG = "prefect.flow_run_id", "prefect.flow_run_name", "prefect.flow_run_url"
MLFLOW_ARTIFACT_KEY = "mlflow-run"
STUDY_RUN_ATTR = "sift_ttft.run."
# Where `sift-ttft ui` serves a local store (its default --host/--port).
LOCAL_UI_URL = "http://127.0.0.1:5000"


def flow_run_tags() -> dict[str, str]:
    """The tags naming the running Prefect flow run (empty outside a flow run)."""
    from prefect.context import FlowRunContext
    from prefect.utilities.urls import url_for

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return {}
    tags = {FLOW_RUN_ID_TAG: str(ctx.flow_run.id), FLOW_RUN_NAME_TAG: str(ctx.flow_run.name)}
    url = url_for("flow-run", obj_id=ctx.flow_run.id)
    if url:
        tags[FLOW_RUN_URL_TAG] = url
    return tags


def mlflow_run_url(tracking_uri: Optional[str], experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: on the tracking server itself, or on ``sift-ttft ui`` for a local store."""
    from tracking.store import is_remote

    base = tracking_uri.rstrip("/") if tracking_uri and is_remote(tracking_uri) else LOCAL_UI_URL
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def link_flow_run_to_mlflow(tracker: Any) -> Optional[dict[str, Optional[str]]]:
    """Link the running flow run and the MLflow run of ``tracker`` (a ``tracking_run`` logger).

    With tracking on, attaches a link artifact (key ``mlflow-run``) to the MLflow run's page. Returns the
    record of both ids and URLs (the MLflow ones None with tracking off); None outside a flow run.
    """
    from prefect.artifacts import create_link_artifact

    tags = flow_run_tags()
    if not tags:
        return None
    record = {"prefect_flow_run_id": tags[FLOW_RUN_ID_TAG], "prefect_flow_run_url": tags.get(FLOW_RUN_URL_TAG),
              "mlflow_run_id": None, "mlflow_run_url": None}
    if getattr(tracker, "enabled", False):
        url = mlflow_run_url(tracker.tracking_uri, tracker.experiment_id, tracker.run_id)
        create_link_artifact(link=url, link_text=f"MLflow run {tracker.run_id}", key=MLFLOW_ARTIFACT_KEY,
                             description=f"The MLflow run of this flow run (experiment {tracker.experiment_id}).")
        record.update(mlflow_run_id=tracker.run_id, mlflow_run_url=url)
    return record
