"""Runs never stay RUNNING after their process is gone.

Every run carries its owner process (tags ``sift.pid``, ``sift.host``, ``sift.start``), and
``reap_orphan_runs`` marks FAILED (tag ``sift.reaped``) the RUNNING runs whose owner on this host is
gone (SIGKILL, the OOM killer, a power cut: no Python cleanup ran). Runs owned by another host are left
RUNNING: from here we cannot tell whether their process is alive. ``sigterm_raises`` turns SIGTERM into
``RunTerminated`` so ``tracking_run`` can mark its runs KILLED before the process dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

# Tags naming the process that owns a run, so a later process can tell a live run from an orphan.
OWNER_PID, OWNER_HOST, OWNER_START, REAPED = "sift.pid", "sift.host", "sift.start", "sift.reaped"
REAPED_REASON = "owner process gone"
_PROC = Path("/proc")


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

