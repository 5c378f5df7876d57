"""MLflow run layout of a flow run: one parent run per flow run, one child run per (prompt, method).

Parent run: params = the whole config + fingerprints/model ids the flow passes + package versions +
git commit; metrics = means and bootstrap intervals per method and per domain; artifacts = summary
CSV/JSON, the raw result rows, and PNG plots. Child run (one per ``PromptResult.to_json()`` row):
``uncertainty`` (σ_n at step n), ``bpb`` (step 0, intermediate evaluations, after the last step),
``bpb_gain``, ``steps``, ``stopped_early``, ``tokens``, ``flops``, ``seconds_<phase>``; artifact: the
prompt's selection table.

Usage (flows)::

    with tracking_run(cfg, experiment=cfg.experiment, run_name="evaluate", enabled=cfg.tracking,
                      params={"index_fingerprint": idx.fingerprint}) as tracker:
        for row in rows: tracker.log_result(row)
        tracker.log_summary(rows)

A crash inside the ``with`` marks the parent and any open child run FAILED (KILLED on Ctrl-C or SIGTERM),
never RUNNING. ``enabled=False`` yields a ``NullLogger`` with the same methods that records nothing.

A process that dies without running Python's cleanup (SIGKILL, the OOM killer) cannot end its runs:
every run carries owner tags and each ``tracking_run`` first reaps its experiment's orphans
(``tracking.reaper``).

The parts live in their own modules: ``tracking.keys`` (MLflow-safe keys and param values),
``tracking.metrics`` (what a row and a summary record), ``tracking.provenance`` (package versions, git
commit), ``tracking.reaper`` (owner tags, orphan reaping, SIGTERM). Their public names are re-exported
here because flows and older callers import them from ``tracking.log``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from sift.stats import summarize
from tracking.inputs import DataInput, log_data_inputs
from tracking.keys import clean_key, flatten_params, param_value
from tracking.metrics import result_metrics, selection_table, summary_csv, summary_metrics
from tracking.naming import UI_COLUMNS_TAG, parent_run_name, result_description, ui_columns
from tracking.plots import (
    plot_alpha_sweep,
    plot_budget_frontier,
    plot_bpb_by_method_domain,
    plot_curves,
    plot_landscape,
    plot_paired,
    plot_step_curves,
    plot_uncertainty_vs_bpb,
)
from tracking.provenance import run_params, user_name
from tracking.reaper import RunTerminated, owner_tags, reap_orphan_runs, sigterm_raises
from tracking.store import check_reachable, default_tracking_uri, get_or_create_experiment
from tracking.system_metrics import start_system_metrics, stop_system_metrics

# Re-exported: these lived here before the split, and callers (flows, other branches) import them from here.
from tracking.keys import MAX_PARAM_CHARS, metric_key  # noqa: E402,F401
from tracking.provenance import PACKAGES, git_commit, package_versions  # noqa: E402,F401
from tracking.reaper import (  # noqa: E402,F401
    OWNER_HOST,
    OWNER_PID,
    OWNER_START,
    REAPED,
    REAPED_REASON,
    owner_alive,
    process_start,
)

log = logging.getLogger(__name__)


class NullLogger:
    """The ``--no-tracking`` logger: the same methods as ``MlflowLogger``, recording nothing.

    ``log_summary`` still computes and returns the summary so callers can print it.
    """

    enabled = False
    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Record nothing."""

    def log_result(self, row: Mapping[str, Any]) -> str | None:
        """Record nothing; return None (no child run id)."""
        return None

    def log_child_run(self, run_name: str, params: Mapping[str, Any] | None = None,
                      metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Record nothing."""
        return None

    def log_summary(self, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return the summary (``summarize(rows)`` when none is given) without recording it."""
        return dict(summary) if summary is not None else summarize(rows)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Close the figure; record nothing."""
        import matplotlib.pyplot as plt

        plt.close(figure)

    def log_landscape(self, params: Sequence[Mapping[str, Any]], values: Sequence[float],
                      objective: str = "objective (lower is better)") -> None:
        """Record nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Record nothing."""

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Record nothing."""


class MlflowLogger:
    """Writes one flow run into MLflow through ``MlflowClient`` (explicit run ids, no fluent global
    state, so Prefect's worker threads can log concurrently; a lock serialises sqlite writes)."""

    enabled = True

    def __init__(self, client: Any, experiment_id: str, run_id: str, tracking_uri: str):
        self.client, self.experiment_id, self.run_id, self.tracking_uri = client, experiment_id, run_id, tracking_uri
        self._lock = threading.RLock()
        self._params: dict[str, str] = {}
        self._open_children: set[str] = set()
        self._closed = False
        self._columns: list[str] = []  # metric keys listed in the experiment's UI_COLUMNS_TAG by this run
        self._monitor: Any | None = None  # the system-metrics sampler (tracking.system_metrics), if any

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"MLflow run {self.run_id} has ended: log inside the `with tracking_run(...)` block")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Add params to the parent run. Re-logging a key with the same value is a no-op; with a different
        value it is a ``ValueError`` (MLflow params are immutable)."""
        from mlflow.entities import Param

        flat = {clean_key(k): param_value(v) for k, v in params.items()}
        with self._lock:
            self._check_open()
            for key, value in flat.items():
                if key in self._params and self._params[key] != value:
                    raise ValueError(f"param {key!r} is already {self._params[key]!r}; cannot change it to {value!r}")
            new = {k: v for k, v in flat.items() if k not in self._params}
            if new:
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in new.items()])
                self._params.update(new)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log metrics on the parent run (keys sanitised with ``clean_key``; non-finite values skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(clean_key(k), float(v), now, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        with self._lock:
            self._check_open()
            if batch:
                self.client.log_batch(self.run_id, metrics=batch)
                self._show_as_columns([m.key for m in batch])

    def _show_as_columns(self, keys: Sequence[str]) -> None:
        """Add the comparison metrics among ``keys`` (``naming.ui_columns``) to the experiment's
        ``UI_COLUMNS_TAG``, merged with what other runs listed there, so the UI shows them as columns."""
        new = [k for k in ui_columns(keys) if k not in self._columns]
        if not new:
            return
        self._columns += new
        try:
            current = self.client.get_experiment(self.experiment_id).tags.get(UI_COLUMNS_TAG)
            listed = json.loads(current) if current else []
        except (ValueError, TypeError):
            listed = []  # a hand-edited tag that is not JSON: rewrite it
        merged = ui_columns([*(listed if isinstance(listed, list) else []), *self._columns])
        if merged != listed:
            self.client.set_experiment_tag(self.experiment_id, UI_COLUMNS_TAG, json.dumps(merged))

    @contextlib.contextmanager
    def _child(self, run_name: str, tags: Mapping[str, str], seconds: float | None = None) -> Iterator[str]:
        """A child run that ends FINISHED, FAILED if logging into it raises, KILLED on Ctrl-C/SIGTERM.

        ``seconds``: the compute the child stands for, which happened before it is logged; its start
        time is set that far back so MLflow's Duration column shows the compute, not the milliseconds
        the logging takes."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        start = None
        if seconds is not None and math.isfinite(seconds) and seconds > 0:
            start = int((time.time() - seconds) * 1000)
        with self._lock:
            self._check_open()
            run = self.client.create_run(self.experiment_id, run_name=run_name, start_time=start,
                                         tags={MLFLOW_PARENT_RUN_ID: self.run_id, **owner_tags(), **tags})
            child_id = run.info.run_id
            self._open_children.add(child_id)
            try:
                yield child_id
            except (KeyboardInterrupt, RunTerminated):
                self.client.set_terminated(child_id, "KILLED")
                self._open_children.discard(child_id)
                raise
            except BaseException:
                self.client.set_terminated(child_id, "FAILED")
                self._open_children.discard(child_id)
                raise
            self.client.set_terminated(child_id, "FINISHED")
            self._open_children.discard(child_id)

    def log_result(self, row: Mapping[str, Any]) -> str:
        """One child run for one (prompt, method) result row; returns its run id.

        Params/tags: prompt_id, method, domain (tags ``stop_reason`` and ``skipped_reason`` when set). Metrics: ``result_metrics(row)``. Artifact:
        ``selection.json`` (``selection_table(row)`` via ``log_table``) when the method picked anything.
        Description (top of the run's page): ``naming.result_description``. Start and end time span the
        row's compute (``seconds_total``), so the UI's Duration is the real compute time.
        """
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

        from mlflow.entities import Metric, Param

        for key in ("prompt_id", "method", "domain", "bpb_before", "bpb_after"):
            if key not in row:
                raise ValueError(f"result row has no {key!r}: pass PromptResult.to_json() dicts")
        ident = {"prompt_id": str(row["prompt_id"]), "method": str(row["method"]), "domain": str(row["domain"])}
        now = int(time.time() * 1000)
        computed = result_metrics(row)
        metrics = [Metric(k, v, now, s) for k, v, s in computed]
        compute = next((v for k, v, _ in computed if k == "seconds_total"), None)
        tags = dict(ident)
        tags[MLFLOW_RUN_NOTE] = result_description(row, compute)[:5000]
        for key in ("stop_reason", "skipped_reason"):
            if row.get(key):
                tags[key] = str(row[key])[:5000]
        with self._child(f"{ident['prompt_id']}/{ident['method']}", tags, seconds=compute) as child_id:
            self.client.log_batch(child_id, metrics=metrics, params=[Param(k, v) for k, v in ident.items()])
            table = selection_table(row)
            if table["rank"]:
                self.client.log_table(child_id, table, "selection.json")
        return child_id

    def log_child_run(self, run_name: str, params: Mapping[str, Any] | None = None,
                      metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None) -> str:
        """A generic finished child run (e.g. one Optuna trial); returns its run id."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        with self._child(run_name, {k: str(v) for k, v in (tags or {}).items()}) as child_id:
            self.client.log_batch(
                child_id,
                metrics=[Metric(clean_key(k), float(v), now, 0) for k, v in (metrics or {}).items()
                         if v is not None and math.isfinite(float(v))],
                params=[Param(clean_key(k), param_value(v)) for k, v in (params or {}).items()],
            )
        return child_id

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as a PNG artifact of the parent run, then close it."""
        import matplotlib.pyplot as plt

        try:
            with self._lock:
                self._check_open()
                self.client.log_figure(self.run_id, figure, artifact_file, save_kwargs={"dpi": 110})
        finally:
            plt.close(figure)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file or folder into the parent run's artifacts."""
        with self._lock:
            self._check_open()
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Write a JSON-able dict as an artifact file of the parent run (e.g. a table of results)."""
        with self._lock:
            self._check_open()
            self.client.log_dict(self.run_id, dict(dictionary), artifact_file)

    def log_summary(self, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record a run's summary (``sift.stats.summarize(rows)`` when none is given) on the parent run.

        Metrics: ``summary_metrics``. Artifacts: ``summary.csv``, ``summary.json``, ``results.jsonl`` (the
        rows), ``plots/bpb_by_method_domain.png``, ``plots/bpb_gain_by_method_domain.png``,
        ``plots/paired_vs_<reference>.png``, ``plots/uncertainty_vs_bpb_after.png``,
        ``plots/uncertainty_vs_bpb_gain.png``, ``plots/curves.png``, and where the rows have per-step
        curves ``plots/step_curves.png``, ``plots/alpha_sweep_<method>.png`` and
        ``plots/budget_frontier_<method>.png``.
        """
        summary = dict(summary) if summary is not None else summarize(rows)
        self.log_metrics(summary_metrics(summary))
        with self._lock:
            self._check_open()
            self.client.log_text(self.run_id, summary_csv(summary), "summary.csv")
            self.client.log_text(self.run_id, json.dumps(summary, indent=1, default=str), "summary.json")
            self.client.log_text(self.run_id, "".join(json.dumps(dict(r), default=str) + "\n" for r in rows),
                                 "results.jsonl")
        self.log_figure(plot_bpb_by_method_domain(summary, "bpb_after"), "plots/bpb_by_method_domain.png")
        self.log_figure(plot_bpb_by_method_domain(summary, "bpb_gain"), "plots/bpb_gain_by_method_domain.png")
        if summary.get("paired"):
            self.log_figure(plot_paired(summary), f"plots/paired_vs_{summary['reference']}.png")
        self.log_figure(plot_uncertainty_vs_bpb(rows, "bpb_after"), "plots/uncertainty_vs_bpb_after.png")
        self.log_figure(plot_uncertainty_vs_bpb(rows, "bpb_gain"), "plots/uncertainty_vs_bpb_gain.png")
        self.log_figure(plot_curves(rows), "plots/curves.png")
        if any(len(c) > 2 for c in summary.get("step_curves", {}).values()):
            self.log_figure(plot_step_curves(summary), "plots/step_curves.png")
        for method in summary.get("alpha_sweep", {}):
            self.log_figure(plot_alpha_sweep(summary, method), f"plots/alpha_sweep_{method}.png")
        for method in summary.get("budget_frontier", {}):
            self.log_figure(plot_budget_frontier(summary, method), f"plots/budget_frontier_{method}.png")
        return summary

    def log_landscape(self, params: Sequence[Mapping[str, Any]], values: Sequence[float],
                      objective: str = "objective (lower is better)") -> None:
        """Record the tuning landscape (``plot_landscape``) as ``plots/landscape.png`` and the trials
        as ``trials.json`` (a table: one row per trial, its params and value)."""
        self.log_figure(plot_landscape([dict(p) for p in params], list(values), objective=objective),
                        "plots/landscape.png")
        keys = list(dict.fromkeys(k for p in params for k in p))
        table = {k: [p.get(k) for p in params] for k in keys}
        table["value"] = [None if v is None else float(v) for v in values]
        with self._lock:
            self._check_open()
            self.client.log_table(self.run_id, table, "trials.json")

    def _finish(self, status: str, error: str | None = None, details: str | None = None) -> None:
        """End the run (and open children) with ``status``; ``error`` (one line) becomes the ``error``
        tag, ``details`` (the traceback) the ``error_traceback`` tag, its last 5000 characters."""
        from mlflow.entities import RunTag

        stop_system_metrics(self._monitor)  # first: its last samples belong to the RUNNING run
        self._monitor = None
        with self._lock:
            for child_id in list(self._open_children):
                self.client.set_terminated(child_id, "FAILED")
            self._open_children.clear()
            if error:
                tags = [RunTag("error", error[:5000])]
                if details:
                    tags.append(RunTag("error_traceback", details[-5000:]))
                self.client.log_batch(self.run_id, tags=tags)
            self.client.set_terminated(self.run_id, status)
            self._closed = True


@contextlib.contextmanager
def tracking_run(config: Any = None, *, experiment: str = "sift-ttft", run_name: str | None = None,
                 enabled: bool = True, tracking_uri: str | None = None, params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, str] | None = None, datasets: Sequence[DataInput] | None = None,
                 system_metrics: bool = True, parent_run_id: str | None = None,
                 reachability_timeout: float = 5.0) -> Iterator[MlflowLogger | NullLogger]:
    """One parent MLflow run around a flow run; yields its logger (``NullLogger`` when ``enabled`` is false).

    Before anything is created the tracking URI is checked (``check_reachable``), so an unreachable
    server fails in seconds with ``TrackingUnreachable``. On leaving the block the run ends FINISHED;
    an exception marks it (and open child runs) FAILED with an ``error`` tag (and ``error_traceback``), Ctrl-C or SIGTERM
    (``sigterm_raises``, main thread only) marks it KILLED, and the exception or signal propagates.
    Every run gets ``owner_tags``; before creating the parent, orphaned runs of the experiment are
    marked FAILED (``reap_orphan_runs``; a failure to reap is logged, never fatal).

    ``run_name``: None or a plain flow name ("evaluate") becomes what the run compares when the config
    has ``method`` and ``params`` has ``prompts_count`` (``naming.parent_run_name``:
    "evaluate · nn,sift · 48 prompts"). ``datasets``: the data the run reads (``tracking.inputs``:
    ``evaluation_inputs(manifest, index_dir, prompts)``), logged as MLflow dataset inputs whose digest
    is their fingerprint. ``system_metrics``: sample CPU/memory/disk/network into ``system/*`` metrics
    while the run is open, where psutil is installed (``tracking.system_metrics``); the sampler stops
    before the run ends, whichever way it ends. ``parent_run_id``: nest this run under another run of the
    same experiment (the data-size flow's run holds one evaluate run per data space).
    """
    if not enabled:
        yield NullLogger()
        return
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_SOURCE_NAME, MLFLOW_USER

    uri = check_reachable(tracking_uri or default_tracking_uri(), timeout=reachability_timeout)
    experiment_id = get_or_create_experiment(experiment, uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        reaped = reap_orphan_runs(client, [experiment_id])
        if reaped:
            log.warning("marked %d run(s) FAILED whose process died without ending them: %s", len(reaped),
                        ", ".join(reaped))
    except Exception as err:  # noqa: BLE001 — stale bookkeeping must not stop a new flow run
        log.warning("could not check experiment %s for orphaned runs: %s", experiment, err)
    all_params = run_params(config, params)
    run_tags = {MLFLOW_SOURCE_NAME: "sift-ttft", MLFLOW_USER: user_name(), **owner_tags(),
                **{k: str(v) for k, v in (tags or {}).items()}}
    if parent_run_id is not None:
        run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if "git_commit" in all_params:
        run_tags[MLFLOW_GIT_COMMIT] = all_params["git_commit"]
    with sigterm_raises():
        run = client.create_run(experiment_id, run_name=parent_run_name(run_name, config, params), tags=run_tags)
        logger = MlflowLogger(client, experiment_id, run.info.run_id, uri)
        try:
            logger.log_params(all_params)
            if datasets:
                log_data_inputs(client, logger.run_id, datasets)
            if system_metrics:
                logger._monitor = start_system_metrics(logger.run_id, uri)
            yield logger
        except KeyboardInterrupt:
            logger._finish("KILLED", "KeyboardInterrupt")
            raise
        except RunTerminated as err:
            logger._finish("KILLED", f"RunTerminated: {err}")
            raise
        except BaseException as err:
            logger._finish("FAILED", f"{type(err).__name__}: {err}", "".join(traceback.format_exception(err)))
            raise
        else:
            logger._finish("FINISHED")
