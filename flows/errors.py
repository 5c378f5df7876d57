"""What the terminal shows when a flow fails: one ``error:`` line, the traceback in the logs.

A failure inside a running flow (a model that fails mid-run, a full disk, any exception in a task)
is logged by Prefect with its traceback, once per task and once per flow, to the console. On the
terminal that buries the cause under screens of Prefect and torch frames. So for a CLI run:

- ``quiet_prefect_console()`` filters the console handlers that Prefect's logging config attached:
  Prefect's own failure records (``prefect.task_runs``/``prefect.flow_runs`` at ERROR) are kept off
  the console, and no console record prints a traceback. Only the console is filtered: the same records,
  tracebacks included, still reach Prefect's API log (its database: the flow run's log in the
  Prefect UI) and the run's log file.
- ``open_run_log(command)`` writes everything the run logs (Prefect's INFO lines, warnings, every
  traceback) to ``<state>/logs/<command>-<UTC time>-<pid>.log``; the newest ``KEEP_LOGS`` are kept.
- ``failure_line(exc)`` is the one line the CLI prints: which task of which flow run failed, the
  exception, and where the full log is.

``--debug`` (every ``sift-ttft`` command) or ``SIFT_DEBUG=1`` leaves the console as Prefect sets it
and prints the traceback too. Why a filter on the handlers rather than a logging.yml of our own
(``PREFECT_LOGGING_SETTINGS_PATH``): a copy of Prefect's logging config would have to follow every
Prefect release; the filter leaves Prefect's config, levels and API logging exactly as they are.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Optional

DEBUG_ENV = "SIFT_DEBUG"  # "1": tracebacks on the terminal (what --debug sets, so child processes see it too)
QUIET_ENV = "SIFT_QUIET_CONSOLE"  # "1": set by quiet_prefect_console for the processes a CLI run starts
KEEP_LOGS = 50  # run log files kept in <state>/logs (the oldest go first)
_PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_PREFECT_ENGINES = ("task_engine", "flow_engine")  # the modules (prefect/*.py) that report a run's failure

_run_log: Optional[Path] = None  # this process's run log file, once open_run_log ran
_run_handler: Optional[logging.Handler] = None  # the handler writing it
_failed_task: Optional[str] = None  # the first task run whose failure Prefect logged in this process
_failed_flow_run: Optional[str] = None  # the flow run of the first failure Prefect logged


def debug_requested() -> bool:
    """True when ``SIFT_DEBUG`` is set to anything but empty/0/false/no."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def request_debug() -> None:
    """``--debug``: set ``SIFT_DEBUG=1`` for this process and the ones it starts (Dask workers)."""
    os.environ[DEBUG_ENV] = "1"


class _HideFailureDetails(logging.Filter):
    """Console filter: drop the failure reports of Prefect's engine (ERROR records that its task and flow
    engines log on a task or flow run's logger), remembering which task and flow run failed, for
    ``failure_line``. Every other record passes, our flows' own errors and warnings included. With
    ``hide=False`` (debug) it only remembers, and every record passes."""

    def __init__(self, hide: bool = True):
        super().__init__()
        self.hide = hide

    def filter(self, record: logging.LogRecord) -> bool:
        global _failed_task, _failed_flow_run
        if (record.levelno >= logging.ERROR and record.name.startswith(_PREFECT_RUN_LOGGERS)
                and record.module in _PREFECT_ENGINES):
            if _failed_task is None and getattr(record, "task_run_name", None):
                _failed_task = str(record.task_run_name)
            if _failed_flow_run is None and getattr(record, "flow_run_name", None):
                _failed_flow_run = str(record.flow_run_name)
            return not self.hide
        return True


class _NoTraceback(logging.Formatter):
    """Wraps a console handler's formatter: the same line without the record's traceback. The record
    is restored afterwards, so handlers after this one (the API log, the run log) still format it."""

    def __init__(self, inner: Optional[logging.Formatter]):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _console_handlers() -> list[logging.Handler]:
    """The handlers that write to the terminal: stream handlers on stderr/stdout of the root logger and
    of every configured logger (Prefect attaches its console handler to root, uvicorn and fastapi)."""
    import sys

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    found: list[logging.Handler] = []
    for lg in loggers:
        for handler in lg.handlers:
            stream = getattr(handler, "stream", None)
            if stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) and handler not in found:
                found.append(handler)
    return found


def quiet_prefect_console() -> None:
    """Filter the console handlers as the module docstring says (with debug requested, they only note
    which task failed, for ``failure_line``, and show everything).

    Call after Prefect is imported (its logging config is applied on import); calling it again is a no-op
    for the handlers already filtered.
    """
    import prefect  # noqa: F401 — its import configures logging; the handlers must exist before we wrap them

    global _failed_task, _failed_flow_run
    _failed_task = _failed_flow_run = None  # a new run: forget an earlier one's failure (in-process callers)
    os.environ[QUIET_ENV] = "1"  # Dask workers started from here inherit it (quiet_console_if_asked)
    hide = not debug_requested()
    for handler in _console_handlers():
        if any(isinstance(f, _HideFailureDetails) for f in handler.filters):
            continue
        handler.addFilter(_HideFailureDetails(hide))
        if hide:
            handler.setFormatter(_NoTraceback(handler.formatter))


def quiet_console_if_asked() -> None:
    """In a process started by a CLI run (a LocalCluster Dask worker: it shares the terminal), filter the
    console the same way; flows/tasks.py calls this on import, before any task runs there. Workers of a
    remote cluster write to their own logs and are left as they are."""
    if os.environ.get(QUIET_ENV) == "1":
        quiet_prefect_console()


class _RunLogHandler(logging.FileHandler):
    """A file handler that never prints logging's own error report to the terminal (a full disk must
    not turn the one ``error:`` line back into a screen of tracebacks)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 — logging's name
        pass


def log_dir() -> Path:
    """``<state>/logs``: one log file per CLI run of a flow."""
    from sift.env import state_dir

    return state_dir() / "logs"


def open_run_log(command: str) -> Optional[Path]:
    """Send every record that reaches the root logger (Prefect's run logs included, at INFO) to a new
    ``<state>/logs/<command>-<UTC time>-<pid>.log``, tracebacks included; keep the newest
    ``KEEP_LOGS`` files. Returns the path, or None when the file cannot be created (a full or
    read-only disk: the run goes on without it)."""
    global _run_log, _run_handler
    if _run_log is not None:
        return _run_log
    folder = log_dir()
    path = folder / f"{command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = _RunLogHandler(path, encoding="utf-8")
    except OSError:
        return None
    from prefect.logging.formatters import PrefectFormatter  # names the flow or task run of run records

    handler.setLevel(logging.INFO)
    stamp = "%(asctime)s | %(levelname)-7s | "
    handler.setFormatter(PrefectFormatter(stamp + "%(name)s - %(message)s",
                                          flow_run_fmt=stamp + "Flow run %(flow_run_name)r - %(message)s",
                                          task_run_fmt=stamp + "Task run %(task_run_name)r - %(message)s"))
    logging.getLogger().addHandler(handler)
    _run_log, _run_handler = path, handler
    for old in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    return path


def record_failure(exc: BaseException) -> None:
    """Write ``exc``'s traceback to the run log only (the last thing in it; nothing on the console)."""
    if _run_handler is None:
        return
    record = logging.getLogger("sift_ttft").makeRecord(
        "sift_ttft", logging.ERROR, __file__, 0, "the run failed", (), (type(exc), exc, exc.__traceback__))
    _run_handler.handle(record)


def failure_line(exc: BaseException) -> str:
    """The one line the CLI prints for a failed flow run (without the ``error:`` prefix):
    where it failed (the task run and flow run Prefect logged the failure for), the exception, and where
    its traceback is."""
    message = " / ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # the OS names no file: say what to do
        from sift.env import state_dir

        what += (f" — a disk is full: free space where the state folder ({state_dir(create=False)}) or --out "
                 "lives, then rerun (finished work is reused)")
    where = ""
    if _failed_task:
        where = f"task {_failed_task}" + (f" in flow run '{_failed_flow_run}'" if _failed_flow_run else "") + " failed: "
    elif _failed_flow_run:
        where = f"flow run '{_failed_flow_run}' failed: "
    if debug_requested():
        hint = "traceback above" + (f"; full log: {_run_log}" if _run_log else "")
    elif _run_log:
        hint = f"full log with the traceback: {_run_log}; rerun with --debug (or {DEBUG_ENV}=1) to print it here"
    else:  # it failed before a flow started: no run log yet
        hint = f"rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    return f"{where}{what} ({hint})"


def print_traceback(exc: BaseException) -> None:
    """``--debug``: the exception's traceback on stderr."""
    traceback.print_exception(type(exc), exc, exc.__traceback__)
