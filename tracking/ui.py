"""``sift-ttft ui``: the MLflow web UI over the project's store.

Runs ``mlflow server`` bound to loopback with one worker and MLflow's job runner off (it would spawn
a runner with several consumers that nothing here uses), on the same database and artifact folder
that the flows write to. The app it serves is ``tracking.ui_app`` (MLflow's app, opening on the
model-training view with our metric columns), plugged in through MLflow's documented hook: an
``mlflow.app`` entry point, named by ``--app-name``. The entry point is declared by a two-file package
description in ``<state>/mlflow/ui-app`` that only the server's ``PYTHONPATH`` sees, so nothing is
installed into the environment.

Stopping ``sift-ttft ui`` (Ctrl-C, SIGTERM, the terminal closing) stops the server's whole process
group; a port already in use is refused in one line before anything starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from tracking.store import artifact_root, check_reachable, default_tracking_uri, is_remote, mlflow_dir

APP_NAME = "sift-ttft"  # the mlflow.app entry point naming tracking.ui_app:app
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def server_command(host: str = "127.0.0.1", port: int = 5000, tracking_uri: str | None = None,
                   artifacts: str | Path | None = None) -> list[str]:
    """The ``mlflow server`` command line for the store (default: ``default_tracking_uri()`` and
    ``artifact_root()``), run with this interpreter so the virtualenv's MLflow is the one started."""
    uri = tracking_uri or default_tracking_uri()
    if is_remote(uri):
        raise ValueError(f"tracking URI {uri} is already a server: open it in a browser instead of `sift-ttft ui`")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--artifacts-destination", str(artifacts or artifact_root()),
            "--host", host, "--port", str(int(port)), "--workers", "1", "--app-name", APP_NAME]


def app_plugin_dir() -> Path:
    """``<state>/mlflow/ui-app``: a package description (``*.dist-info``) declaring the ``mlflow.app``
    entry point ``sift-ttft = tracking.ui_app:app``, (re)written when missing or different. On the
    server's ``PYTHONPATH`` only (``server_env``): MLflow finds apps through installed entry points."""
    folder = mlflow_dir() / "ui-app"
    info = folder / "sift_ttft_ui-1.0.dist-info"
    files = {"METADATA": "Metadata-Version: 2.1\nName: sift-ttft-ui\nVersion: 1.0\n",
             "entry_points.txt": f"[mlflow.app]\n{APP_NAME} = tracking.ui_app:app\n"}
    info.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = info / name
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return folder


def server_env(tracking_uri: str | None = None) -> dict[str, str]:
    """The server's environment: ours plus job execution and telemetry off, and on ``PYTHONPATH`` the
    ``app_plugin_dir`` and this checkout (so the server imports the same ``tracking`` as we do).
    ``SIFT_UI_TRACKING_URI`` tells ``tracking.ui_app`` which store's column tags to read."""
    from tracking.ui_app import TRACKING_URI_ENV

    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "true")
    paths = [str(app_plugin_dir()), str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env[TRACKING_URI_ENV] = tracking_uri or default_tracking_uri()
    return env


def port_in_use(host: str, port: int) -> bool:
    """True when something already accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def wait_healthy(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``<url>/health`` until it answers 200; ``RuntimeError`` if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {url} was not healthy after {timeout:g} s")


def start_server(host: str = "127.0.0.1", port: int = 5000, tracking_uri: str | None = None,
                 artifacts: str | Path | None = None, log_file: str | Path | None = None) -> subprocess.Popen:
    """Start ``mlflow server`` in the background (its own process group, so ``stop_server`` ends its
    workers too) and return the process; output goes to ``log_file`` (appended) or to our terminal."""
    uri = check_reachable(tracking_uri or default_tracking_uri())
    if port_in_use(host, port):
        raise ValueError(f"port {port} on {host} is already in use: pass another --port")
    cmd = server_command(host, port, uri, artifacts)
    env = server_env(uri)
    if not log_file:
        return subprocess.Popen(cmd, env=env, start_new_session=True)
    with open(log_file, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def reap_store(tracking_uri: str) -> list[str]:
    """Mark FAILED the RUNNING runs, in every experiment of the store, whose owner process on this host
    is gone (``tracking.reaper.reap_orphan_runs``), so the UI does not show dead flows as running; point
    a moved or copied state folder's experiments at its own artifacts (``tracking.store.relocate_artifacts``).
    Returns their ids; a failure is printed as a warning and never stops the UI."""
    try:
        from mlflow import MlflowClient

        from tracking.reaper import reap_orphan_runs

        from tracking.store import relocate_artifacts

        client = MlflowClient(tracking_uri=tracking_uri)
        experiments = client.search_experiments(max_results=50000)
        for experiment in experiments:  # a moved or copied state folder: show this folder's artifacts
            relocate_artifacts(tracking_uri, experiment)
        reaped = reap_orphan_runs(client, [e.experiment_id for e in experiments])
    except Exception as err:  # noqa: BLE001 — bookkeeping; the UI is still useful without it
        print(f"sift-ttft ui: warning: could not check for orphaned runs: {err}", file=sys.stderr)
        return []
    if reaped:
        print(f"Marked {len(reaped)} run(s) FAILED whose process died without ending them.", flush=True)
    return reaped


class _StopRequested(Exception):
    """SIGTERM or SIGHUP arrived while ``serve`` ran: stop the server and return."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """While open (main thread only), SIGTERM, SIGHUP and SIGINT raise ``_StopRequested``, so ``serve``'s
    ``finally`` stops the server instead of the process dying on the spot and leaving its server (in
    its own session, so no signal reaches it) running. SIGINT is set here too, not left to Python's
    KeyboardInterrupt: a process started in the background by a non-interactive shell inherits SIGINT
    as ignored, and Python keeps it so, so Ctrl-C (or kill -INT) would do nothing. The previous handlers
    come back on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise _StopRequested(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def serve(host: str = "127.0.0.1", port: int = 5000, tracking_uri: str | None = None) -> int:
    """Run the MLflow UI in the foreground until Ctrl-C or SIGTERM; print its URL once it is up; return
    the exit code (0 when stopped on request, else the server's).

    This is what ``sift-ttft ui`` calls. A port already in use is refused (``ValueError``) before any
    other work; then ``reap_store`` ends runs whose process died (SIGKILL). However ``serve`` ends, the
    server's whole process group is stopped. Bind to another host only on purpose: the UI has no login.
    """
    url = f"http://{host}:{port}"
    uri = check_reachable(tracking_uri or default_tracking_uri())
    if is_remote(uri):
        server_command(host, port, uri)  # raises: a server URI needs a browser, not a second server
    if port_in_use(host, port):
        raise ValueError(f"port {port} on {host} is already in use: pass another --port")
    reap_store(uri)
    with _stop_on_signals():
        try:
            process = start_server(host, port, uri)
        except (KeyboardInterrupt, _StopRequested):
            return 0
        try:
            print(f"Starting MLflow UI on {url} (store: {uri}) ...", flush=True)
            wait_healthy(url, timeout=120, process=process)
            print(f"MLflow UI: {url}   (Ctrl-C to stop)", flush=True)
            return process.wait()
        except (KeyboardInterrupt, _StopRequested):
            return 0
        finally:
            stop_server(process)


def main(host: str = "127.0.0.1", port: int = 5000) -> None:
    """CLI entry (``sift-ttft ui``): ``serve``, turning a bad setting into a one-line message and exit 1."""
    from tracking.store import TrackingUnreachable

    try:
        code = serve(host, port)
    except (ValueError, RuntimeError, TrackingUnreachable) as err:
        print(f"sift-ttft ui: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if code:
        raise SystemExit(code)
