"""Prefect's temporary (ephemeral) API server, started safely: one migration at a time, and never outliving
the process that started it.

Without ``PREFECT_API_URL`` every ``sift-ttft`` command runs its flows against a temporary server that
Prefect starts as a child process on the state folder's database (``<state>/prefect/prefect.db``). Two
problems with starting it the way Prefect does:

- **Migrations race.** Several workers started at once on a fresh state folder (``sift-ttft tune`` in
  two shells) each start a server, and each server migrates the same new sqlite database: all but one
  fail ("duplicate column name"). ``start_temporary_server`` holds a file lock in ``PREFECT_HOME`` from
  before the start until the server answers ``/health`` (its migrations are done by then), so the
  servers start one after the other; the later ones find the schema up to date.
- **Orphans.** Prefect stops the server at interpreter exit (``atexit``); a kill -9, the OOM killer or a
  lost terminal skip that, and the server runs on with no parent. A tiny watchdog process (a child of
  ours, next to the server) notices within ``WATCH_SECONDS`` that its parent is gone and terminates the
  server (SIGTERM, SIGKILL after 5 s), then exits. It checks the server's start time before killing, so a
  reused PID is never hit.

With ``PREFECT_API_URL`` set (a real ``prefect server start``, or a test harness) nothing is started.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

WATCH_SECONDS = 1.0
LOCK_NAME = "server-start.lock"

# Runs in its own small interpreter (stdlib only). argv: parent pid, server pid, server start ticks, period.
_WATCHDOG = r"""
import os, signal, sys, time
for name in ("SIGINT", "SIGHUP"):  # a Ctrl-C or hang-up of the shell is the CLI's to handle: only its end counts
    signal.signal(getattr(signal, name), signal.SIG_IGN)
parent, server, start, period = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def started(pid):
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[19]
while os.getppid() == parent:
    if started(server) != start:
        sys.exit(0)  # the server ended on its own (normal exit): nothing to do
    time.sleep(period)
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    if started(server) != start:
        break
    os.kill(server, sig)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and started(server) == start:
        time.sleep(0.1)
"""


def _start_ticks(pid: int) -> Optional[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[19]


def watch_child(pid: int, period: float = WATCH_SECONDS) -> Optional[subprocess.Popen]:
    """Start the watchdog that terminates process ``pid`` once this process is gone (Linux; None elsewhere)."""
    start = _start_ticks(pid)
    if start is None:
        return None
    return subprocess.Popen([sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(pid), start, str(period)],
                            stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)


def _watched_server_class():
    """Prefect's ``SubprocessASGIServer`` with a watchdog started right after each server process is spawned
    (before its health wait, so a kill during a slow start leaves nothing behind either)."""
    from prefect.server.api.server import SubprocessASGIServer

    class WatchedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            process = super()._run_uvicorn_command()
            watch_child(process.pid)
            return process

    return WatchedServer


def start_temporary_server() -> Optional[str]:
    """Start Prefect's temporary server for this process now (if it uses one), under the start lock, with
    its watchdog; return its API URL, or None when ``PREFECT_API_URL`` names a server.

    Idempotent. The server is Prefect's own per-process instance: ``SubprocessASGIServer()`` returns the
    instance registered for "no port", which is ours (a subclass adding the watchdog) when we start first,
    so Prefect's ephemeral client uses this server instead of starting another.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        return None
    server = _watched_server_class()() if None not in SubprocessASGIServer._instances else SubprocessASGIServer()
    if server.running:
        return server.api_url
    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the server is healthy: its migrations are done
        server.start()
    return server.api_url
