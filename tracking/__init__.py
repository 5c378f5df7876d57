"""tracking: records flow runs in MLflow and draws their plots (flows call it; ``sift/`` never does).

- ``tracking.store``: tracking URI, artifact folder, experiments, ``check_reachable``.
- ``tracking.log``: ``tracking_run`` (parent run per flow run, child run per (prompt, method)),
  ``NullLogger`` for ``--no-tracking``.
- ``tracking.keys`` / ``tracking.metrics`` / ``tracking.provenance`` / ``tracking.reaper``: MLflow-safe
  names, what a result row and a summary record, package versions and git commit, orphan-run reaping.
- ``tracking.plots``: matplotlib figures from result rows (no MLflow inside).
- ``tracking.ui``: ``serve`` runs ``mlflow server`` over the project's store (``sift-ttft ui``).
"""

from typing import Any

__all__ = ["MlflowLogger", "NullLogger", "tracking_run", "TrackingUnreachable", "check_reachable",
           "default_tracking_uri", "serve"]

# Imported on first use: `import tracking.ui_app` (in the MLflow server) or `tracking.ui` should not pay
# for tracking.log's imports (sift, numpy, matplotlib: over a second on 2 cores).
_HOMES = {"MlflowLogger": "tracking.log", "NullLogger": "tracking.log", "tracking_run": "tracking.log",
          "TrackingUnreachable": "tracking.store", "check_reachable": "tracking.store",
          "default_tracking_uri": "tracking.store", "serve": "tracking.ui"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'tracking' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
