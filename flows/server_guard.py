"""The temporary Prefect server of a CLI run dies with the CLI, even when the CLI is killed with -9.

Without ``PREFECT_API_URL`` Prefect starts a temporary server (``SubprocessASGIServer``: a uvicorn
subprocess on a free port) and stops it from an ``atexit`` hook. A process killed by SIGKILL or the
OOM killer runs no hook, so the server would live on, holding a port, memory and Prefect's database.
``guard_temporary_server()`` starts that same server up front (the instance Prefect's client uses in
this process, so the flow talks to it as before) and a watchdog process beside it: the watchdog polls
whether the CLI still runs and, once it is gone, stops the server (SIGTERM, then SIGKILL) and exits.
It also exits when the server is gone. Why a watchdog and not ``PR_SET_PDEATHSIG`` in the server:
Prefect starts the server with its own ``Popen`` call (no hook for a preexec function), and the death
signal would fire when the *thread* that started it ends, not the process.

Run as ``python -m flows.server_guard PARENT_PID PARENT_START SERVER_PID SERVER_START``: imports only
``tracking.reaper``'s process checks (which tell a live process from a reused PID or a zombie).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_SECONDS = 0.5  # how often the watchdog looks at the CLI (a killed CLI's server is gone within ~1 s)
STOP_GRACE_SECONDS = 5.0  # SIGTERM first (uvicorn closes its database connections), then SIGKILL


def guard_temporary_server() -> int | None:
    """Start Prefect's temporary server for this process, with its watchdog; return the server's PID.

    Nothing to do (returns None) when ``PREFECT_API_URL`` names a server: that server is not ours to stop.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    from tracking.reaper import process_start

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        return None
    server = SubprocessASGIServer()  # the instance Prefect's ephemeral client uses in this process
    server.start()  # a no-op when it already runs
    process = server.server_process
    if process is None:
        return None
    if getattr(server, "_sift_watchdog", None) is None:
        me = os.getpid()
        server._sift_watchdog = subprocess.Popen(  # type: ignore[attr-defined]
            [sys.executable, "-m", "flows.server_guard", str(me), process_start(me) or "",
             str(process.pid), process_start(process.pid) or ""],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal is the CLI's to handle, not the watchdog's
            env={**os.environ, "PYTHONPATH": _import_path()},
        )
    return process.pid


def _import_path() -> str:
    """PYTHONPATH for the watchdog: this checkout first, so ``-m flows.server_guard`` finds this module."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")


def watch(parent: int, parent_start: str | None, server: int, server_start: str | None) -> None:
    """Wait until ``parent`` is gone (or ``server`` is), then stop ``server``."""
    from tracking.reaper import owner_alive

    while owner_alive(server, server_start):
        if not owner_alive(parent, parent_start):
            _stop(server, server_start, owner_alive)
            return
        time.sleep(POLL_SECONDS)


def _stop(pid: int, start: str | None, alive) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, STOP_GRACE_SECONDS)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid, start):
                return
            time.sleep(0.1)


if __name__ == "__main__":
    for name in ("SIGINT", "SIGHUP"):  # outlive a hang-up or Ctrl-C of the shell: only the end of the CLI counts
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    parent_pid, parent_start, server_pid, server_start = sys.argv[1:5]
    watch(int(parent_pid), parent_start or None, int(server_pid), server_start or None)
