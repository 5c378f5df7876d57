"""Provenance of a run: its params (config, caller extras, the versions of the packages that decide the
numbers, the git commit) and who started it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from tracking.keys import clean_key, flatten_params, param_value

# Versions recorded on every parent run: what decides the numbers.
PACKAGES = ("sift-ttft", "torch", "transformers", "datasets", "faiss-cpu", "numpy", "peft", "prefect", "mlflow",
            "optuna")


def package_versions() -> dict[str, str]:
    """``version.<package>`` → installed version ("missing" when not installed) plus ``version.python``."""
    out = {"version.python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"version.{name}"] = "missing"
    return out


def git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the checkout this package runs from, or None outside git (e.g. a wheel)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def run_params(config: Any = None, params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The parent run's params: the flattened config, the caller's extras (fingerprints, model and
    embedder ids), package versions and ``git_commit``/``git_dirty`` when running from a checkout."""
    out = flatten_params(config) if config is not None else {}
    out.update({clean_key(k): param_value(v) for k, v in (params or {}).items()})
    out.update(package_versions())
    commit = git_commit()
    if commit is not None:
        out["git_commit"], out["git_dirty"] = commit[0], str(commit[1])
    return out


def user_name() -> str:
    """The login name for the run's "Created by" (MLflow's fluent API sets it; the client does not)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
