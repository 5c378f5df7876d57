"""The frame: the library stays pure, the state folder and environment defaults, the test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_sift_pulls_in_no_orchestration_or_tracking():
    """`import sift` (and every module of it) must not import prefect, mlflow or optuna."""
    modules = sorted(p.stem for p in (REPO / "sift").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        "import sift\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('sift.' + name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'mlflow', 'optuna'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"sift imported {out.stdout.strip()}"


def test_state_dir_honours_sift_home(tmp_path, monkeypatch):
    from sift.env import state_dir

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "custom"))
    assert state_dir() == (tmp_path / "custom").resolve()
    assert state_dir().is_dir()
    monkeypatch.delenv("SIFT_HOME")
    monkeypatch.chdir(tmp_path)
    assert state_dir(create=False) == (tmp_path / ".sift-state").resolve()


def test_set_default_env_keeps_what_the_user_set(tmp_path, monkeypatch):
    from sift.env import set_default_env

    monkeypatch.setenv("SIFT_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a user who has the hub
    for key in ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "PREFECT_HOME"):
        monkeypatch.delenv(key, raising=False)
    set_default_env()
    assert os.environ["HF_HUB_OFFLINE"] == "0"
    assert os.environ["DO_NOT_TRACK"] == "true"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "prefect")


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^\s*(make \w+)\s*$", readme, flags=re.M)
    assert commands[:2] == ["make demo", "make test"], commands
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)


def test_test_command_treats_no_tests_as_failure(tmp_path):
    """pytest exits 5 when it collects nothing; scripts/test.sh must turn that into a failure."""
    (tmp_path / "test_nothing_here.py").write_text("# no tests\n")
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "test.sh"), str(tmp_path), "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no tests were collected" in result.stderr
