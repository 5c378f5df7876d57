"""`sift-ttft ui`: the app it serves (MLflow's, with the page's defaults script) and its lifecycle: a port
in use is refused in one line; SIGTERM or Ctrl-C stops the MLflow server it started. Loopback only."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracking.ui_app import DefaultViewApp, defaults_script, inject
from tracking.ui import port_in_use, server_command, server_env

ROOT = Path(__file__).resolve().parents[1]
PAGE = b'<!doctype html><html><head><title>MLflow</title><script defer src="main.js"></script></head><body></body></html>'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------ the page script


def test_script_goes_before_mlflows_bundle_and_cannot_be_closed_by_data():
    script = defaults_script({"7": ["sift/bpb_after", "paired/sift-vs-nn/mean"], "8": ["x</script>"]})
    page = inject(PAGE, script)
    assert page.index(b"mlflow.workflowType_v1") < page.index(b'src="main.js"')
    assert page.count(b"</script>") == PAGE.count(b"</script>") + 1  # "x</script>" arrived escaped
    assert '"7": ["sift/bpb_after", "paired/sift-vs-nn/mean"]' in script
    assert inject(b"<p>no head</p>", "<script>s</script>") == b"<script>s</script><p>no head</p>"


def run_app(app, path: str = "/", method: str = "GET", headers=()) -> tuple[dict, bytes]:
    """One request through an ASGI app; (response start message, body)."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def fake_mlflow(seen: list):
    """Stands in for MLflow's app: the page at "/" (in two chunks, with an ETag), JSON elsewhere."""
    async def app(scope, receive, send):
        seen.append(scope)
        if scope["path"] == "/":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"etag", b'"abc"'),
                                    (b"content-length", str(len(PAGE)).encode())]})
            await send({"type": "http.response.body", "body": PAGE[:40], "more_body": True})
            await send({"type": "http.response.body", "body": PAGE[40:], "more_body": False})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b"{}"})
    return app


def test_wrapper_changes_only_the_page_and_sends_it_uncached(monkeypatch):
    import tracking.ui_app as ui_app

    monkeypatch.setattr(ui_app, "experiment_columns", lambda uri: {"3": ["nn/bpb_after"]})
    seen: list = []
    app = DefaultViewApp(fake_mlflow(seen), tracking_uri="sqlite:///unused.db")
    start, body = run_app(app, "/", headers=[(b"if-none-match", b'"abc"')])
    assert body == inject(PAGE, defaults_script({"3": ["nn/bpb_after"]}))
    headers = dict(start["headers"])
    assert headers[b"content-length"] == str(len(body)).encode() and headers[b"cache-control"] == b"no-store"
    assert b"etag" not in headers
    assert (b"if-none-match", b'"abc"') not in seen[-1]["headers"]  # never a 304 for yesterday's script
    start, body = run_app(app, "/ajax-api/2.0/mlflow/experiments/search")
    assert body == b"{}" and b"workflowType" not in body


# ------------------------------------------------------------------------------- the server's command


def test_server_runs_our_app_through_mlflows_app_hook(store_uri):
    cmd = server_command(port=5055)
    assert cmd[cmd.index("--app-name") + 1] == "sift-ttft"
    env = server_env()
    plugin = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    entry = next(plugin.glob("*.dist-info")) / "entry_points.txt"
    assert "[mlflow.app]\nsift-ttft = tracking.ui_app:app" in entry.read_text()
    assert str(ROOT) in env["PYTHONPATH"].split(os.pathsep)
    assert env["SIFT_UI_TRACKING_URI"] == store_uri
    # MLflow finds the app where the server will look for it.
    out = subprocess.run([sys.executable, "-c", "from mlflow.server import _find_app; print(_find_app('sift-ttft'))"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "tracking.ui_app:app", out.stderr[-2000:]


@pytest.fixture()
def store_uri():
    from tracking.store import default_tracking_uri

    return default_tracking_uri()


# --------------------------------------------------------------------------------- the CLI, stopping


def cli(port: int, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_port_in_use_is_refused_in_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = cli(port)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [f"sift-ttft ui: port {port} on 127.0.0.1 is already in use: pass another --port"]
    assert "Traceback" not in out + err


def processes() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, session id, state) of every process, from /proc/<pid>/stat."""
    out = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
            out[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[0])
    return out


def server_processes(ui_pid: int) -> list[int]:
    """The server the UI started and everything in its session (start_new_session: sid = its pid)."""
    procs = processes()
    servers = {pid for pid, (ppid, _, _) in procs.items() if ppid == ui_pid}
    return sorted(pid for pid, (_, sid, _) in procs.items() if sid in servers)


def alive(pid: int) -> bool:
    state = processes().get(pid)
    return state is not None and state[2] not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_ui_stops_the_server_it_started(stop):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to see the server's processes")
    port = free_port()
    proc = cli(port)
    try:
        deadline = time.monotonic() + 180
        while not port_in_use("127.0.0.1", port):  # the server (uvicorn) answers on the port
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the UI did not come up in 180 s"
            time.sleep(0.5)
        server = server_processes(proc.pid)
        assert len(server) >= 2, f"mlflow server and its uvicorn worker expected, got {server}"
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    deadline = time.monotonic() + 15
    while any(alive(p) for p in server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in server if alive(p)], "no orphan mlflow/uvicorn process may survive the UI"
    assert not port_in_use("127.0.0.1", port)
