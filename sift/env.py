"""Where the program keeps its state, and the environment every entry point runs with.

Everything sift-ttft writes (converted model, embeddings, indices, Prefect home and results, the
MLflow store, Optuna storage) lives under one state folder so that a user can find it, move it, or
delete it in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = ".sift-state"


def state_dir(create: bool = True) -> Path:
    """Return the state folder: ``$SIFT_HOME`` if set, else ``./.sift-state`` (absolute path).

    The folder is created unless ``create`` is false.
    """
    path = Path(os.environ.get("SIFT_HOME") or DEFAULT_STATE_DIR).expanduser().resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def state_relative(path: str | Path) -> str:
    """``path`` as the program records it in its own files (index pointer, cached task results): relative
    to the state folder when it lies inside it, else absolute. Why: a moved or copied state folder then
    still finds its own files (``state_path`` re-resolves them under the state folder of the moment)."""
    path = Path(path).expanduser().resolve()
    try:
        return path.relative_to(state_dir()).as_posix()
    except ValueError:
        return str(path)


def state_path(recorded: str | Path) -> Path:
    """A path recorded by ``state_relative``: relative ones are under the current state folder."""
    path = Path(recorded).expanduser()
    return path if path.is_absolute() else state_dir() / path


def set_default_env() -> None:
    """Set telemetry-off, hub-offline and state-folder variables unless the user already set them.

    Why each one (see shared notes on the stack):
    - ``DO_NOT_TRACK``, ``PREFECT_SERVER_ANALYTICS_ENABLED``, ``MLFLOW_DISABLE_TELEMETRY``: no vendor
      telemetry (the machines have no network; the calls only log errors).
    - ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120``: the 20 s default is too short on 2 cores.
    - ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: else ``mlflow server`` spawns a job runner.
    - ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``: fail fast instead of hanging on an unreachable hub.
      Users with the hub can set them to 0.
    - ``PREFECT_HOME``, ``HF_HOME``: keep Prefect's database and HF caches inside the state folder.
    """
    state = state_dir()
    defaults = {
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PREFECT_HOME": str(state / "prefect"),
        "HF_HOME": str(state / "hf"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
