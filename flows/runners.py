"""Which Prefect task runner executes the per-prompt tasks and the embedding shards.

- ``thread``: in this process, one task at a time (``ThreadPoolTaskRunner(max_workers=1)``); per-prompt
  work runs in prompt order. Why not more threads: torch already uses every core for one task, and
  the model is shared (fine-tuning mutates it), so parallel threads would only fight.
- ``dask``: ``prefect_dask.DaskTaskRunner``. Without ``dask_address`` it starts a
  ``distributed.LocalCluster`` of ``dask_workers`` processes with one thread each (each worker loads
  its own model once, so tasks never share weights); with ``dask_address`` it connects to an
  existing scheduler (``tcp://host:8786``), e.g. one started by ``dask scheduler`` / dask-jobqueue /
  dask-kubernetes. Workers must see the same state folder (``SIFT_HOME``) path as the flow: the
  cached results and embedding shards are files there. The LocalCluster serves Dask's dashboard (and
  prefect-dask prints its link) only where bokeh is installed (the ``dashboard`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.config import RunnerConfig

if TYPE_CHECKING:  # keep `import flows.runners` light: prefect_dask pulls in distributed
    from prefect.task_runners import TaskRunner


def make_task_runner(config: RunnerConfig) -> "TaskRunner":
    """Build the task runner that ``config.task_runner`` names (see the module docstring)."""
    if config.task_runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    if config.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        share_api_with_workers()
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": config.dask_workers,
                "threads_per_worker": 1,  # one task per worker process at a time: torch uses the cores
                "processes": True,
                # Any free loopback port (never collides, never public); only with bokeh, which the page needs
                # (`pip install 'sift-ttft[dashboard]'`): without it no dashboard, and no link to an empty page.
                "dashboard_address": "127.0.0.1:0" if has_bokeh() else None,
            },
        )
    raise ValueError(f"task_runner={config.task_runner!r} is not one of 'thread', 'dask'")


def has_bokeh() -> bool:
    """Whether the Dask dashboard can be served (distributed's dashboard pages are bokeh apps)."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def share_api_with_workers() -> None:
    """Make LocalCluster workers report to this process's Prefect API.

    Dask workers are other processes: without ``PREFECT_API_URL`` in their environment each would
    start a temporary Prefect server of its own. Export this process's API URL (starting its
    temporary server first in Prefect's ephemeral mode); workers inherit the environment when the
    cluster starts. A remote cluster needs a real server (``prefect server start``) reachable from
    its workers, with ``PREFECT_API_URL`` set on them.
    """
    import os

    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL"):
        return
    url = PREFECT_API_URL.value()  # set by a profile or temporary settings, not by the environment
    if not url:
        from flows.prefect_server import start_temporary_server

        url = start_temporary_server()  # the instance Prefect's ephemeral client uses in this process
    os.environ["PREFECT_API_URL"] = url


def is_dask_runner(runner: object) -> bool:
    """True when ``runner`` is a prefect-dask DaskTaskRunner (without importing prefect_dask when not)."""
    return type(runner).__name__ == "DaskTaskRunner"


def current_runner_matches(config: RunnerConfig) -> bool:
    """Whether the running flow already uses the kind of runner ``config`` asks for.

    A deployment starts the flow with its decorator's runner; when its parameters ask for Dask, the
    flow hands the per-prompt work to a subflow on a DaskTaskRunner instead (see flows/evaluate.py).
    """
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None:
        raise RuntimeError("current_runner_matches must be called inside a running flow")
    return is_dask_runner(ctx.task_runner) == (config.task_runner == "dask")
