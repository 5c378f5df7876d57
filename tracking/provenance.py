"""Provenance of a run: the versions of the packages that decide the numbers, and the git commit."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

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
