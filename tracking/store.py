"""Where MLflow keeps runs: the tracking URI, the artifact folder, experiments, reachability.

Default store: ``sqlite:////<state>/mlflow/mlflow.db`` (four slashes: an absolute path) with artifacts
in ``<state>/mlflow/artifacts``, so ``sift-ttft ui`` and every flow see the same runs without any setup.
``MLFLOW_TRACKING_URI`` overrides the database (any backend MLflow accepts, or an ``http(s)://`` server).
``database_url`` maps a plain ``postgresql://`` URL to the driver that is installed (one rule for every
database URL the program takes: the MLflow store and the Optuna storage).
"""

from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from sift.env import state_dir


class TrackingUnreachable(RuntimeError):
    """The tracking URI cannot be used; the message says why and what to do."""


def mlflow_dir() -> Path:
    """``<state>/mlflow``: the default home of the sqlite database and of the artifacts."""
    path = state_dir() / "mlflow"
    path.mkdir(parents=True, exist_ok=True)
    return path


# SQLAlchemy's dialect+driver names of the PostgreSQL drivers we can map a plain URL to, in order of
# preference: psycopg 3 (the `postgres` extra, binary wheel) first, then psycopg2 if a user has it.
_POSTGRES_DRIVERS = (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2"))
POSTGRES_EXTRA_HINT = "install the PostgreSQL driver: pip install 'sift-ttft[postgres]' (psycopg 3)"


def database_url(url: str) -> str:
    """``url`` with a plain ``postgresql://`` (or ``postgres://``) scheme mapped to the installed driver.

    Why: SQLAlchemy 2 reads a plain ``postgresql://`` as psycopg2, which the project does not install;
    the ``postgres`` extra installs psycopg 3, spelled ``postgresql+psycopg://``. A URL that names its
    driver (``postgresql+psycopg2://``, ``mysql+pymysql://``) or another database is returned unchanged.
    Raises ``ValueError`` (with the install command) for a PostgreSQL URL when no driver is installed.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return url
    for module, dialect in _POSTGRES_DRIVERS:
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise ValueError(f"{masked_url(url)!r} is a PostgreSQL URL but no driver is installed: {POSTGRES_EXTRA_HINT}")


def masked_url(url: str) -> str:
    """``url`` as logged, printed or put in an error: a password in it becomes ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set (a plain ``postgresql://`` mapped by ``database_url``), else
    ``sqlite:////<state>/mlflow/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return database_url(env)
    # str(abs path) starts with "/", so "sqlite:///" + "/abs" gives the four slashes MLflow needs.
    return f"sqlite:///{mlflow_dir() / 'mlflow.db'}"


def artifact_root() -> Path:
    """``<state>/mlflow/artifacts``: where local stores keep run artifacts (one folder per experiment)."""
    path = mlflow_dir() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_remote(uri: str) -> bool:
    """True for an ``http(s)://`` tracking server (artifacts then live wherever the server puts them)."""
    return urllib.parse.urlparse(uri).scheme in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other schemes or in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_reachable(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, before any expensive work, if the tracking URI cannot be used; return the URI.

    - ``http(s)://``: one GET of ``<uri>/health`` within ``timeout`` seconds. Any HTTP answer (even
      401/404 from a proxy) counts as reachable; a refused connection, DNS failure or timeout does not.
      Why: MLflow's own client retries an unreachable server with backoff for minutes.
    - ``sqlite:///``: the database's folder must exist or be creatable, and be writable.
    - anything else (other databases, ``databricks``): accepted; MLflow reports its own errors.
    Raises ``TrackingUnreachable`` with the cause and the ways out.
    """
    uri = uri or default_tracking_uri()
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    advice = (
        "start it (`sift-ttft ui` serves the local store), set MLFLOW_TRACKING_URI to a reachable server, "
        "unset MLFLOW_TRACKING_URI to use the local store in the state folder, or run with --no-tracking"
    )
    if is_remote(uri):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered: it is reachable, whatever it thinks of /health
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnreachable(
                f"MLflow tracking server {uri} is not reachable ({reason}; waited at most {timeout:g} s): {advice}."
            ) from None
        return uri
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingUnreachable(f"cannot create the folder of the MLflow database {db} ({err}): {advice}.") from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnreachable(f"the MLflow database {db} is not writable: {advice}.")
    return uri


def _folder_name(experiment: str) -> str:
    """A file-system-safe folder name for an experiment's artifacts."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("._") or "experiment"


# MLflow 3's UI opens experiments in its GenAI (traces) view unless the experiment says it holds
# model-training runs; ours do, so the runs table, metrics charts and artifacts are what users see.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def relocate_artifacts(uri: str, experiment) -> bool:
    """Point a moved or copied state folder's experiment (and its runs) at this state folder's artifacts.

    MLflow stores artifact locations as absolute ``file://`` URIs, so a state folder that was moved or
    copied would read (and write) the original folder's artifacts. For the state folder's own sqlite
    store only, an experiment whose location is ``.../mlflow/artifacts/<its folder>`` somewhere else is
    rewritten to ``<this state>/mlflow/artifacts/<its folder>``, with the same prefix of its runs'
    artifact URIs (MLflow has no API to change them: two SQL updates on its tables). Other stores (a
    sqlite file given in MLFLOW_TRACKING_URI, a tracking server) are left alone: a team shares a
    tracking server (docs/team.md) instead of moving files. Returns whether anything was rewritten.
    """
    import sqlite3

    db = sqlite_path(uri)
    if db is None or db.resolve() != (mlflow_dir() / "mlflow.db").resolve():
        return False
    old = (experiment.artifact_location or "").rstrip("/")
    new = (artifact_root() / _folder_name(experiment.name)).as_uri()
    if old == new or not old.startswith("file://") or not old.endswith(f"/mlflow/artifacts/{_folder_name(experiment.name)}"):
        return False
    with sqlite3.connect(db, timeout=60) as conn:
        conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                     (new, int(experiment.experiment_id)))
        conn.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                     "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                     (new, len(old) + 1, int(experiment.experiment_id), len(old), old))
    return True


def get_or_create_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Return the id of experiment ``name``, creating it (or restoring a deleted one) if needed.

    Local stores get an explicit artifact location ``<artifact_root>/<name>`` (without one, MLflow
    writes to ``./mlruns`` in whatever folder the process runs). An ``http(s)`` server picks its own
    location (``--artifacts-destination``): a local path of this machine would mean nothing there.
    The experiment is tagged ``mlflow.experimentKind=custom_model_development`` (model-training view).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not name or not name.strip():
        raise ValueError("experiment name must be a non-empty string")
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        relocate_artifacts(uri, found)
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if EXPERIMENT_KIND_TAG not in found.tags:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    location = None if is_remote(uri) else (artifact_root() / _folder_name(name)).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:
        # Another process created it between our lookup and create: use theirs.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
