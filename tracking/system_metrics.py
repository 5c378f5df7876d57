"""MLflow system metrics (CPU, memory, disk, network; GPU where one is found) on a run we own by id.

``mlflow.start_run(log_system_metrics=True)`` starts MLflow's ``SystemMetricsMonitor`` only for fluent
runs, and its ``end_run`` is what stops it. Our runs are created through ``MlflowClient`` (explicit run
ids, safe across Prefect's threads), so we start and stop the same monitor ourselves, pointed at the
run's own tracking URI (MLflow's fluent path would use the process-global one).

The monitor samples every ``SAMPLING_INTERVAL`` seconds in a daemon thread and logs ``system/*``
metrics, shown on the run page's "System metrics" tab. ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
overrides the interval (MLflow reads it); ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

# Seconds between samples: one flow run lasts minutes; a sample every 10 s is detail enough and keeps
# the monitor's own cost (a few psutil calls and one small write) negligible on 2 cores.
SAMPLING_INTERVAL = 10.0

log = logging.getLogger(__name__)


def system_metrics_available() -> bool:
    """True when psutil is installed (MLflow's monitor needs it) and the user has not turned system
    metrics off with ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in ("false", "0", "no"):
        return False
    return importlib.util.find_spec("psutil") is not None


def start_system_metrics(run_id: str, tracking_uri: str, interval: float = SAMPLING_INTERVAL) -> Any | None:
    """Start sampling system metrics into run ``run_id``; return the monitor to pass to
    ``stop_system_metrics``, or None when unavailable (no psutil, turned off) or when it fails to start
    (logged as a warning: system metrics are never worth failing a flow run for)."""
    if not system_metrics_available():
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=tracking_uri)
        monitor.start()
    except Exception as err:  # noqa: BLE001 — optional telemetry of our own machine
        log.warning("could not start MLflow system metrics: %s", err)
        return None
    return monitor


def stop_system_metrics(monitor: Any | None) -> None:
    """Stop the sampling thread and write what it still holds; call it before the run is ended, so
    the last samples land while the run is RUNNING. Never raises (None: nothing to stop)."""
    if monitor is None:
        return
    try:
        monitor.finish()  # sets the shutdown event, joins the thread, flushes the batch
    except Exception as err:  # noqa: BLE001
        log.warning("could not stop MLflow system metrics cleanly: %s", err)
