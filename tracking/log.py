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

A process that dies without running Python's cleanup (SIGKILL, the OOM killer, a power cut) cannot end
its runs. So every run carries its owner process (tags ``sift.pid``, ``sift.host``, ``sift.start``), and
each ``tracking_run`` first marks FAILED (tag ``sift.reaped``) the RUNNING runs of its experiment whose
owner on this host is gone (``reap_orphan_runs``). Runs owned by another host are left RUNNING: from
here we cannot tell whether their process is alive; they are reaped by the next run on that host.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from sift.stats import final_uncertainty, summarize, total, total_seconds
from tracking.plots import (
    plot_alpha_sweep,
    plot_bpb_by_method_domain,
    plot_curves,
    plot_landscape,
    plot_paired,
    plot_step_curves,
    plot_uncertainty_vs_bpb,
)
from tracking.store import check_reachable, default_tracking_uri, get_or_create_experiment

# Versions recorded on every parent run: what decides the numbers.
PACKAGES = ("sift-ttft", "torch", "transformers", "datasets", "faiss-cpu", "numpy", "peft", "prefect", "mlflow",
            "optuna")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value

# Tags naming the process that owns a run, so a later process can tell a live run from an orphan.
OWNER_PID, OWNER_HOST, OWNER_START, REAPED = "sift.pid", "sift.host", "sift.start", "sift.reaped"
REAPED_REASON = "owner process gone"
_PROC = Path("/proc")

log = logging.getLogger(__name__)


def metric_key(*parts: Any) -> str:
    """Join parts with "/" after replacing every character MLflow refuses in a key
    (allowed: ``[A-Za-z0-9_-. :/]``) by "_"; "/" inside a part becomes "_" too so parts stay parts."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. :]", "_", str(p)) for p in parts)


def clean_key(key: str) -> str:
    """``key`` with every character MLflow refuses (allowed: ``[A-Za-z0-9_-. :/]``) replaced by "_"."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(key))


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 15] + "...(truncated)"


def _flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """A pydantic model or mapping → {"key" or "outer.inner": str}; lists become JSON strings."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a pydantic model or a mapping, got {type(config).__name__}")
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[clean_key(name)] = _param_value(value)
    return flat


def package_versions() -> dict[str, str]:
    """``version.<package>`` → installed version ("missing" when not installed) plus ``version.python``."""
    out = {"version.python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"version.{name}"] = "missing"
    return out


def git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the checkout this package runs from, or None outside git (e.g. a wheel)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def result_metrics(row: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """The child-run metrics of one result row as (key, value, step).

    ``uncertainty`` at step n = σ_n for n = 0..len(picks); ``bpb`` at step 0 (before), at every step of
    ``bpb_curve`` and at step ``steps`` (after); scalars at step 0: bpb_before, bpb_after,
    bpb_gain = before − after, steps, picks, repeats, unique_docs, stopped_early (0/1), uncertainty_final
    (σ_N after the trained picks), tokens/flops (or tokens_<part> for dicts), tokens_train/tokens_eval,
    candidate_count, eval_bytes, max_score, low_similarity when present, seconds_<phase>, and
    seconds_total (the row's ``seconds["total"]``, else the sum of the phases).
    """
    out: list[tuple[str, float, int]] = []
    for n, sigma in enumerate(row.get("uncertainties") or []):
        out.append(("uncertainty", float(sigma), n))
    before, after, steps = float(row["bpb_before"]), float(row["bpb_after"]), int(row.get("steps") or 0)
    curve = {int(s): float(v) for s, v in (row.get("bpb_curve") or [])}
    curve[0], curve[steps] = before, after  # the measured endpoints win over a curve's copies
    out += [("bpb", v, s) for s, v in sorted(curve.items())]
    picks = list(row.get("picked_seq_ids") or row.get("picked_ids") or [])
    scalars: dict[str, float] = {
        "bpb_before": before, "bpb_after": after, "bpb_gain": before - after, "steps": float(steps),
        "picks": float(len(picks)), "repeats": float(sum(bool(x) for x in row.get("repeated") or [])),
        "unique_docs": float(len(set(row.get("picked_ids") or []))),
        "stopped_early": float(bool(row.get("stopped_early"))),
    }
    sigma_final = final_uncertainty(dict(row))
    if sigma_final is not None:
        scalars["uncertainty_final"] = sigma_final
    for name in ("tokens", "flops"):
        value = row.get(name)
        if isinstance(value, Mapping):
            scalars.update({metric_key(f"{name}_{k}"): float(v) for k, v in value.items() if v is not None})
            scalars[name] = total(value)
        elif value is not None:
            scalars[name] = float(value)
    # Extra numbers PromptResult carries (tokens split, candidates, evaluated bytes, similarity flag).
    for name in ("tokens_train", "tokens_eval", "candidate_count", "eval_bytes", "max_score", "low_similarity"):
        value = row.get(name)
        if isinstance(value, (bool, int, float)):
            scalars[name] = float(value)
    seconds = row.get("seconds") or {}
    if isinstance(seconds, Mapping):
        scalars.update({metric_key(f"seconds_{k}"): float(v) for k, v in seconds.items() if v is not None})
    scalars["seconds_total"] = total_seconds(seconds) if seconds else float("nan")
    out += [(k, v, 0) for k, v in scalars.items() if math.isfinite(v)]
    return out


def selection_table(row: Mapping[str, Any]) -> dict[str, list]:
    """The prompt's picks, one row per pick in order: rank (1-based), seq_id, corpus_id (document id),
    domain, score (retrieval similarity), repeated (picked before), uncertainty_after (σ after this pick),
    trained (rank ≤ steps: adaptive stopping may leave the tail untrained)."""
    seq_ids = list(row.get("picked_seq_ids") or [])
    doc_ids = list(row.get("picked_ids") or [])
    count = max(len(seq_ids), len(doc_ids))
    sigmas = list(row.get("uncertainties") or [])
    steps = int(row.get("steps") or 0)

    def column(name: str) -> list:
        values = list(row.get(name) or [])
        return values + [None] * (count - len(values))

    return {
        "rank": list(range(1, count + 1)),
        "seq_id": (seq_ids + [None] * count)[:count],
        "corpus_id": (doc_ids + [None] * count)[:count],
        "domain": column("picked_domains")[:count],
        "score": column("picked_scores")[:count],
        "repeated": [bool(x) if x is not None else None for x in column("repeated")[:count]],
        "uncertainty_after": [sigmas[i + 1] if i + 1 < len(sigmas) else None for i in range(count)],
        "trained": [i < steps for i in range(count)],
    }


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Parent-run metrics from ``sift.stats.summarize``: ``<method>/<stat>`` over all prompts,
    ``<method>/<domain>/<stat>`` per domain, ``paired/<method>-vs-<reference>/{mean,ci_low,ci_high,wins}``
    (bits per byte after, method − reference, 95 % bootstrap interval over prompts).
    Non-finite values (e.g. ρ of < 3 points) are left out."""
    stats = ("count", "bpb_before", "bpb_before_lo", "bpb_before_hi", "bpb_after", "bpb_after_lo", "bpb_after_hi",
             "bpb_gain", "bpb_gain_lo", "bpb_gain_hi", "steps", "tokens", "flops", "seconds_total",
             "uncertainty_final", "stopped_early", "spearman_sigma_bpb_after", "spearman_sigma_gain",
             "unique_sequences")
    out: dict[str, float] = {}
    for g in summary["groups"]:
        prefix = (g["method"],) if g["domain"] == "all" else (g["method"], g["domain"])
        for stat in stats:
            value = g.get(stat)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[metric_key(*prefix, stat)] = float(value)
    for p in summary.get("paired", []):  # paired/<method>-vs-<reference>/{mean,ci_low,ci_high,wins}
        for stat in ("mean", "ci_low", "ci_high", "wins"):
            if isinstance(p.get(stat), (int, float)) and math.isfinite(p[stat]):
                out[f"paired/{p['method']}-vs-{p['reference']}/{stat}"] = float(p[stat])
    return out


def summary_csv(summary: Mapping[str, Any]) -> str:
    """The ``groups`` table of a summary as CSV text (one line per method × domain)."""
    import csv

    groups = summary["groups"]
    fields = list(dict.fromkeys(k for g in groups for k in g))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(groups)
    return buf.getvalue()


def _linux_stat(pid: int) -> tuple[str, str] | None:
    """(state, starttime) from ``/proc/<pid>/stat`` (fields 3 and 22; starttime = clock ticks after
    boot), or None when the process is gone or this is not Linux."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name (field 2) may hold spaces and ")"
    return fields[0], fields[19]


def _boot_id() -> str:
    """This boot's id: PIDs and start ticks restart at every boot, so a start time names a process
    only together with the boot it belongs to."""
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def process_start(pid: int) -> str | None:
    """``"<boot id>:<start ticks>"`` of a live process on Linux, None elsewhere or when it is gone.

    Two processes with the same PID (the kernel reuses them) have different start values, so
    (pid, start) names one process for the life of the machine.
    """
    stat = _linux_stat(pid)
    return None if stat is None else f"{_boot_id()}:{stat[1]}"


def owner_tags() -> dict[str, str]:
    """The tags that name this process as a run's owner: ``sift.pid``, ``sift.host`` and, on Linux,
    ``sift.start`` (``process_start``; without it only "is the PID alive" can be checked)."""
    tags = {OWNER_PID: str(os.getpid()), OWNER_HOST: socket.gethostname()}
    start = process_start(os.getpid())
    if start is not None:
        tags[OWNER_START] = start
    return tags


def owner_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` on this host still runs and is the one that started at ``start``.

    Dead: no such PID; a zombie (it has exited and will never write again); or, when ``start`` is given
    and ``/proc`` can say, a different start time (the PID was reused). Without ``/proc`` (not Linux),
    a live PID counts as alive. A PID owned by another user (``PermissionError``) still exists.
    """
    if pid <= 0:
        raise ValueError(f"pid must be > 0, got {pid}")  # os.kill(0, …) would address our process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not (_PROC / "self" / "stat").exists():
        return True
    stat = _linux_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return not start or f"{_boot_id()}:{stat[1]}" == start


def _orphaned(tags: Mapping[str, str], host: str) -> bool:
    """True when the run's owner tags name a process on ``host`` that is gone; runs without owner tags
    (made by other tools) and runs of other hosts are never orphans here."""
    if tags.get(OWNER_HOST) != host:
        return False
    try:
        pid = int(tags.get(OWNER_PID, ""))
    except ValueError:
        return False
    return pid > 0 and not owner_alive(pid, tags.get(OWNER_START))


def reap_orphan_runs(client: Any, experiment_ids: Sequence[str]) -> list[str]:
    """Mark FAILED, with tag ``sift.reaped=owner process gone``, every RUNNING run of the experiments
    whose owner (``owner_tags``) ran on this host and is no longer alive; return their run ids.

    Why: a SIGKILL'd flow never runs its ``finally``, so its parent and child runs would otherwise
    stay RUNNING forever. Runs owned by other hosts are left alone (their processes cannot be seen
    from here). Costs one ``search_runs`` per page of RUNNING runs.
    """
    if not experiment_ids:
        return []
    host = socket.gethostname()
    reaped: list[str] = []
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000, page_token=token)
        for run in page:
            if _orphaned(run.data.tags, host):
                client.set_tag(run.info.run_id, REAPED, REAPED_REASON)
                client.set_terminated(run.info.run_id, "FAILED")
                reaped.append(run.info.run_id)
        token = page.token
        if not token:
            return reaped


class RunTerminated(BaseException):
    """SIGTERM arrived while a ``tracking_run`` was open. A ``BaseException`` (like ``KeyboardInterrupt``)
    so that ``except Exception`` in flow code does not swallow a request to stop."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While open (in the main thread), SIGTERM raises ``RunTerminated`` instead of ending the process
    on the spot, so ``tracking_run`` can mark its runs KILLED. On leaving, the previous handler is
    restored; if ``RunTerminated`` leaves the block, the signal is passed on to that handler (the
    default one then ends the process with SIGTERM as if we had never been there; Prefect's raises its
    own ``TerminationSignal``). Elsewhere than the main thread, or when SIGTERM is ignored or handled
    outside Python, this does nothing: signal handlers can only be set in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
        yield
        return
    armed = [True]

    def raise_terminated(signum: int, frame: Any) -> None:
        # One exception only: a second SIGTERM while the runs are being marked must not cut that short.
        if armed[0]:
            armed[0] = False
            raise RunTerminated(signum)

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except RunTerminated as err:
        signal.signal(signal.SIGTERM, previous)
        if previous is signal.SIG_DFL:
            os.kill(os.getpid(), err.signum)  # dies here, with the exit status a SIGTERM gives
        elif callable(previous):
            previous(err.signum, None)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"MLflow run {self.run_id} has ended: log inside the `with tracking_run(...)` block")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Add params to the parent run. Re-logging a key with the same value is a no-op; with a different
        value it is a ``ValueError`` (MLflow params are immutable)."""
        from mlflow.entities import Param

        flat = {clean_key(k): _param_value(v) for k, v in params.items()}
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

    @contextlib.contextmanager
    def _child(self, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
        """A child run that ends FINISHED, FAILED if logging into it raises, KILLED on Ctrl-C/SIGTERM."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        with self._lock:
            self._check_open()
            run = self.client.create_run(self.experiment_id, run_name=run_name,
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

        Params/tags: prompt_id, method, domain (tag ``skipped_reason`` when set). Metrics: ``result_metrics(row)``. Artifact:
        ``selection.json`` (``selection_table(row)`` via ``log_table``) when the method picked anything.
        """
        from mlflow.entities import Metric, Param

        for key in ("prompt_id", "method", "domain", "bpb_before", "bpb_after"):
            if key not in row:
                raise ValueError(f"result row has no {key!r}: pass PromptResult.to_json() dicts")
        ident = {"prompt_id": str(row["prompt_id"]), "method": str(row["method"]), "domain": str(row["domain"])}
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, s) for k, v, s in result_metrics(row)]
        tags = dict(ident)
        if row.get("skipped_reason"):
            tags["skipped_reason"] = str(row["skipped_reason"])[:5000]
        with self._child(f"{ident['prompt_id']}/{ident['method']}", tags) as child_id:
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
                params=[Param(clean_key(k), _param_value(v)) for k, v in (params or {}).items()],
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

    def log_summary(self, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record a run's summary (``sift.stats.summarize(rows)`` when none is given) on the parent run.

        Metrics: ``summary_metrics``. Artifacts: ``summary.csv``, ``summary.json``, ``results.jsonl`` (the
        rows), ``plots/bpb_by_method_domain.png``, ``plots/bpb_gain_by_method_domain.png``,
        ``plots/paired_vs_<reference>.png``, ``plots/uncertainty_vs_bpb_after.png``,
        ``plots/uncertainty_vs_bpb_gain.png``, ``plots/curves.png``, and where the rows have per-step
        curves ``plots/step_curves.png`` and ``plots/alpha_sweep_<method>.png``.
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

    def _finish(self, status: str, error: str | None = None) -> None:
        from mlflow.entities import RunTag

        with self._lock:
            for child_id in list(self._open_children):
                self.client.set_terminated(child_id, "FAILED")
            self._open_children.clear()
            if error:
                self.client.log_batch(self.run_id, tags=[RunTag("error", error[:5000])])
            self.client.set_terminated(self.run_id, status)
            self._closed = True


def run_params(config: Any = None, params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The parent run's params: the flattened config, the caller's extras (fingerprints, model and
    embedder ids), package versions and ``git_commit``/``git_dirty`` when running from a checkout."""
    out = _flatten(config) if config is not None else {}
    out.update({clean_key(k): _param_value(v) for k, v in (params or {}).items()})
    out.update(package_versions())
    commit = git_commit()
    if commit is not None:
        out["git_commit"], out["git_dirty"] = commit[0], str(commit[1])
    return out


def _user() -> str:
    """The login name for the run's "Created by" (MLflow's fluent API sets it; the client does not)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@contextlib.contextmanager
def tracking_run(config: Any = None, *, experiment: str = "sift-ttft", run_name: str | None = None,
                 enabled: bool = True, tracking_uri: str | None = None, params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, str] | None = None,
                 reachability_timeout: float = 5.0) -> Iterator[MlflowLogger | NullLogger]:
    """One parent MLflow run around a flow run; yields its logger (``NullLogger`` when ``enabled`` is false).

    Before anything is created the tracking URI is checked (``check_reachable``), so an unreachable
    server fails in seconds with ``TrackingUnreachable``. On leaving the block the run ends FINISHED;
    an exception marks it (and open child runs) FAILED with an ``error`` tag, Ctrl-C or SIGTERM
    (``sigterm_raises``, main thread only) marks it KILLED, and the exception or signal propagates.
    Every run gets ``owner_tags``; before creating the parent, orphaned runs of the experiment are
    marked FAILED (``reap_orphan_runs``; a failure to reap is logged, never fatal).
    """
    if not enabled:
        yield NullLogger()
        return
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_USER

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
    run_tags = {MLFLOW_SOURCE_NAME: "sift-ttft", MLFLOW_USER: _user(), **owner_tags(),
                **{k: str(v) for k, v in (tags or {}).items()}}
    if "git_commit" in all_params:
        run_tags[MLFLOW_GIT_COMMIT] = all_params["git_commit"]
    with sigterm_raises():
        run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
        logger = MlflowLogger(client, experiment_id, run.info.run_id, uri)
        try:
            logger.log_params(all_params)
            yield logger
        except KeyboardInterrupt:
            logger._finish("KILLED", "KeyboardInterrupt")
            raise
        except RunTerminated as err:
            logger._finish("KILLED", f"RunTerminated: {err}")
            raise
        except BaseException as err:
            logger._finish("FAILED", f"{type(err).__name__}: {err}")
            raise
        else:
            logger._finish("FINISHED")
