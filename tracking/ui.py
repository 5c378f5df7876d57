"""``sift-ttft ui``: the MLflow web UI over the project's store.

Runs ``mlflow server`` bound to loopback with one worker and MLflow's job runner off (it would spawn
a runner with several consumers that nothing here uses), on the same database and artifact folder
that the flows write to.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tracking.store import artifact_root, check_reachable, default_tracking_uri, is_remote


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
            "--host", host, "--port", str(int(port)), "--workers", "1"]


def server_env() -> dict[str, str]:
    """The server's environment: ours plus job execution and telemetry off."""
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "true")
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
    if not log_file:
        return subprocess.Popen(cmd, env=server_env(), start_new_session=True)
    with open(log_file, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=server_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
    import signal

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
    is gone (``tracking.reaper.reap_orphan_runs``), so the UI does not show dead flows as running.
    Returns their ids; a failure is printed as a warning and never stops the UI."""
    try:
        from mlflow import MlflowClient

        from tracking.reaper import reap_orphan_runs

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_ids = [e.experiment_id for e in client.search_experiments(max_results=50000)]
        reaped = reap_orphan_runs(client, experiment_ids)
    except Exception as err:  # noqa: BLE001 — bookkeeping; the UI is still useful without it
        print(f"sift-ttft ui: warning: could not check for orphaned runs: {err}", file=sys.stderr)
        return []
    if reaped:
        print(f"Marked {len(reaped)} run(s) FAILED whose process died without ending them.", flush=True)
    return reaped


def serve(host: str = "127.0.0.1", port: int = 5000, tracking_uri: str | None = None) -> int:
    """Run the MLflow UI in the foreground until Ctrl-C; print its URL once it is up; return the exit code.

    This is what ``sift-ttft ui`` calls. First ``reap_store`` ends runs whose process died (SIGKILL).
    Bind to another host only on purpose: the UI has no login.
    """
    url = f"http://{host}:{port}"
    uri = check_reachable(tracking_uri or default_tracking_uri())
    if not is_remote(uri):  # a server URI is refused by start_server: say so before any slower work
        reap_store(uri)
    process = start_server(host, port, tracking_uri)
    try:
        print(f"Starting MLflow UI on {url} (store: {tracking_uri or default_tracking_uri()}) ...", flush=True)
        wait_healthy(url, timeout=120, process=process)
        print(f"MLflow UI: {url}   (Ctrl-C to stop)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
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
