"""A failure inside a running flow ends in one ``error:`` line on the terminal; the traceback goes to the
run log, Prefect's flow run log and the FAILED MLflow run; ``--debug`` / ``SIFT_DEBUG=1`` prints it.

The model is a ``faulty-llama`` (tests/faulty_cli.py): a tiny Llama that loads, scores the prompt and
takes one training step, then its forward pass raises. The CLI runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from flow_helpers import prefect_api_url

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faulty_lm_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from faulty_cli import save_faulty_model

    return save_faulty_model(tiny_lm_dir, tmp_path_factory.mktemp("faulty-lm"))


def _run_faulty_evaluate(tmp_path: Path, index: Path, prompts: Path, model: Path, *extra: str, env_extra=None):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "SIFT_DEBUG"}
    env.update(SIFT_HOME=str(state), PREFECT_API_URL=prefect_api_url(), PYTHONPATH=str(ROOT),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", **(env_extra or {}))
    command = [sys.executable, str(ROOT / "tests" / "faulty_cli.py"), "evaluate", "--index", str(index),
               "--prompts", str(prompts), "--model", str(model), "--method", "nn", "--n", "3", "--k", "12",
               "--max-tokens", "32", "--limit", "1", "--experiment", "faults", *extra]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, state


def _error_line(stderr: str) -> str:
    """The one ``error:`` line; after it only Prefect's own shutdown log lines may follow (its event and
    log workers drain at exit and, on a busy machine, say so)."""
    lines = stderr.rstrip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    after = lines[errors[0] + 1:]
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} \| (INFO|WARNING) ", line) for line in after), after
    return lines[errors[0]]


def _mlflow_runs(tmp_path: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faults")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` IS NULL")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_model_failing_mid_fine_tuning_ends_in_one_error_line_with_the_traceback_in_the_logs(
        tmp_path, tiny_index_dir, tiny_prompts_file, faulty_lm_dir):
    done, state = _run_faulty_evaluate(tmp_path, tiny_index_dir, tiny_prompts_file, faulty_lm_dir)
    assert done.returncode == 1, done.stderr[-3000:]
    terminal = done.stdout + done.stderr
    assert "Traceback" not in terminal, terminal[-3000:]
    line = _error_line(done.stderr)
    assert "task finetune_evaluate" in line and "RuntimeError: faulty-llama: the forward pass of training step 2" in line
    logs = list((state / "logs").glob("evaluate-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line and "--debug" in line
    log = logs[0].read_text()
    assert "Traceback" in log and 'faulty_cli.py", line' in log and "Task run 'finetune_evaluate" in log

    (run,) = _mlflow_runs(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("RuntimeError: faulty-llama")
    assert "Traceback" in run.data.tags["error_traceback"] and "faulty_cli.py" in run.data.tags["error_traceback"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_debug_prints_the_traceback(tmp_path, tiny_index_dir, tiny_prompts_file, faulty_lm_dir):
    done, _ = _run_faulty_evaluate(tmp_path, tiny_index_dir, tiny_prompts_file, faulty_lm_dir, "--debug", "--no-tracking")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and 'faulty_cli.py", line' in done.stderr
    assert _error_line(done.stderr).startswith("error: task finetune_evaluate")


@pytest.mark.parametrize("value, debug", [("1", True), ("yes", True), ("0", False), ("", False), (None, False)])
def test_sift_debug_variable(monkeypatch, value, debug):
    from flows import errors

    if value is None:
        monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(errors.DEBUG_ENV, value)
    assert errors.debug_requested() is debug


def test_the_console_filter_hides_prefects_failure_reports_and_tracebacks_but_not_other_records():
    from flows import errors

    def record(name: str, level: int, module: str, exc: bool = False) -> logging.LogRecord:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info() if exc else None
        rec = logging.LogRecord(name, level, f"/x/{module}.py", 1, "message", (), info)
        rec.task_run_name = "finetune_evaluate-1"
        return rec

    quiet, formatter = errors._HideFailureDetails(), errors._NoTraceback(logging.Formatter("%(message)s"))
    failure = record("prefect.task_runs", logging.ERROR, "task_engine", exc=True)
    assert not quiet.filter(failure)  # Prefect's own failure report: off the console
    assert quiet.filter(record("prefect.task_runs", logging.ERROR, "evaluate"))  # our flows' own errors stay
    assert quiet.filter(record("prefect.flow_runs", logging.INFO, "flow_engine"))  # progress lines stay
    other = record("mlflow", logging.WARNING, "store", exc=True)
    assert quiet.filter(other) and formatter.format(other) == "message"  # shown, without its traceback
    assert other.exc_info is not None  # ... and the record keeps it for the log handlers after the console
    assert "Traceback" in logging.Formatter().format(other)


@pytest.fixture()
def full_disk(tmp_path):
    """A folder on a 64 KiB tmpfs that is already 60 KB full (skipped where mounting is not allowed)."""
    folder = tmp_path / "full"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs privileges this machine does not give")
    try:
        (folder / "filler").write_bytes(b"\0" * 60_000)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_disk_that_fills_during_index_embedding_ends_in_one_error_line(
        tmp_path, full_disk, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir):
    state = tmp_path / "state"
    state.mkdir()
    (state / "embeddings").symlink_to(full_disk)  # the embedding shards go to the full disk
    env = {k: v for k, v in os.environ.items() if k != "SIFT_DEBUG"}
    env.update(SIFT_HOME=str(state), PREFECT_API_URL=prefect_api_url(), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "flows.cli", "index", "--corpus", str(tiny_corpus_file), "--embedder",
               str(tiny_encoder_dir), "--model", str(tiny_lm_dir), "--max-tokens", "8", "--shard-size", "2",
               "--out", str(tmp_path / "index")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    last = _error_line(done.stderr)
    assert last.startswith("error: task embed_shard") and "No space left on device" in last and "a disk is full" in last
    assert not (tmp_path / "index" / "manifest.json").exists()
