"""tracking: records flow runs in MLflow and draws their plots (flows call it; ``sift/`` never does).

- ``tracking.store``: tracking URI, artifact folder, experiments, ``check_reachable``.
- ``tracking.log``: ``tracking_run`` (parent run per flow run, child run per (prompt, method)),
  ``NullLogger`` for ``--no-tracking``.
- ``tracking.keys`` / ``tracking.metrics`` / ``tracking.provenance`` / ``tracking.reaper``: MLflow-safe
  names, what a result row and a summary record, package versions and git commit, orphan-run reaping.
- ``tracking.plots``: matplotlib figures from result rows (no MLflow inside).
- ``tracking.ui``: ``serve`` runs ``mlflow server`` over the project's store (``sift-ttft ui``).
"""

from tracking.log import MlflowLogger, NullLogger, tracking_run
from tracking.store import TrackingUnreachable, check_reachable, default_tracking_uri
from tracking.ui import serve

__all__ = ["MlflowLogger", "NullLogger", "tracking_run", "TrackingUnreachable", "check_reachable",
           "default_tracking_uri", "serve"]
