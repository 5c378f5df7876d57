"""Crash anywhere, lose nothing: ``kill -9`` a run mid-way, rerun it, and get an uninterrupted run's results.

One test per crash point (the table below): index embedding, fine-tuning, MLflow logging and ``tune``.
The flow runs in a subprocess (pointed at the session's Prefect test server; ``tune`` through the CLI with
its own temporary Prefect server); the test kills it with SIGKILL once the point is reached. After each kill:

- every process the killed one had started (the temporary Prefect server, its watchdog) is gone;
- the newest Prefect result record is truncated, as a kill in the middle of its write (Prefect's local
  result storage writes in place) would leave it: the rerun must treat it as a cache miss and recompute;
- the rerun, in this process with the same state folder, completes and equals an uninterrupted run in a
  fresh state folder; no MLflow run is left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flow_helpers import comparable, prefect_api_url, tiny_evaluate_config, tiny_index_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

ROOT = Path(__file__).resolve().parents[1]

RUNNER = """
import json, sys
sys.path.insert(0, {tests!r})
if __name__ == "__main__":  # Dask's worker processes are spawned: they import this file again
    kind, config_json = sys.argv[1], sys.argv[2]
    if kind == "index":
        from flows.build_index import build_index as flow_fn
        from flows.config import IndexConfig as Config
    else:
        from flows.evaluate import evaluate as flow_fn
        from flows.config import EvaluateConfig as Config
    flow_fn(Config.model_validate_json(config_json))
    print("FINISHED")
"""


def _start(kind: str, config, state: Path, tmp_path: Path, **env_extra: str) -> subprocess.Popen:
    script = tmp_path / "run_flow.py"
    script.write_text(RUNNER.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, SIFT_HOME=str(state), PREFECT_API_URL=prefect_api_url(), PYTHONUNBUFFERED="1", **env_extra)
    log = (tmp_path / f"{kind}.log").open("w")
    return subprocess.Popen([sys.executable, str(script), kind, config.model_dump_json()], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _descendants(pid: int) -> list[tuple[int, str | None, str]]:
    """(pid, start, command line) of every live process below ``pid`` (children, their children...), from /proc."""
    from tracking.reaper import process_start

    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents.setdefault(int(text[text.rindex(")") + 2:].split()[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append((child, process_start(child), _command(child)))
            todo.append(child)
    return found


def _kill_when(process: subprocess.Popen, ready, timeout: float = 180.0) -> list[tuple[int, str | None, str]]:
    """SIGKILL the process as soon as ``ready()`` holds; fail if it finished (or hung) first. Returns the
    processes it had started, as they were just before the kill."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            below = _descendants(process.pid)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return below
        if process.poll() is not None:
            pytest.fail(f"the flow exited ({process.returncode}) before it could be killed mid-way")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    pytest.fail("the flow made no progress within the timeout")


def _assert_outlived_by_none(processes: list[tuple[int, str | None, str]], timeout: float = 20.0) -> None:
    """No process the killed one started outlives it (a zombie waiting to be reaped counts as gone)."""
    from tracking.reaper import owner_alive

    deadline = time.monotonic() + timeout
    alive = processes
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [(pid, start, command) for pid, start, command in alive if owner_alive(pid, start)]
    assert not alive, f"outlived their killed parent: {[command for _, _, command in alive]}"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return str(pid)


def _result_records(state: Path) -> list[Path]:
    return [p for p in (state / "prefect" / "results").glob("*") if p.is_file()]


def _truncate_newest_record(state: Path) -> Path:
    """Cut the newest result record in half: what a kill in the middle of its write leaves behind."""
    newest = max(_result_records(state), key=lambda p: p.stat().st_mtime_ns)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    return newest


def _runs(tracking_uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_kill_9_during_index_embedding(tmp_path, monkeypatch, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir):
    from flows.build_index import build_index

    config = tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tmp_path / "index", shard_size=2)
    state = tmp_path / "state"
    process = _start("index", config, state, tmp_path)
    shards = lambda: list((state / "embeddings").glob("*/shard-*.npy"))  # noqa: E731
    started = _kill_when(process, lambda: len(shards()) >= 3 and len(_result_records(state)) >= 3)
    _assert_outlived_by_none(started)
    done_before = len(shards())
    assert not (tmp_path / "index" / "manifest.json").exists()
    _truncate_newest_record(state)

    monkeypatch.setenv("SIFT_HOME", str(state))
    resumed = build_index(config)
    # The shard in flight may lack its record, and one record was truncated: both are recomputed.
    assert resumed["shards"].get("Cached", 0) >= done_before - 2
    assert sum(resumed["shards"].values()) == 57

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "reference-state"))
    reference = build_index(config.model_copy(update={"out": tmp_path / "reference"}))
    assert resumed["fingerprint"] == reference["fingerprint"]
    assert np.array_equal(np.load(tmp_path / "index" / "embeddings.npy"),
                          np.load(tmp_path / "reference" / "embeddings.npy"))


@pytest.fixture(scope="module")
def twelve_prompts(tmp_path_factory, tiny_prompts_file) -> Path:
    """12 prompts (the 4 tiny ones under 3 ids each): × 2 methods, long enough to be caught mid-way."""
    prompts = tmp_path_factory.mktemp("crash-prompts") / "prompts.jsonl"
    base = [json.loads(line) for line in tiny_prompts_file.read_text().splitlines()]
    prompts.write_text("".join(json.dumps(dict(p, id=f"{p['id']}-{i}")) + "\n" for i in range(3) for p in base))
    return prompts


@pytest.fixture(scope="module")
def uninterrupted_rows(tmp_path_factory, tiny_index_dir, twelve_prompts, tiny_lm_dir) -> list[dict]:
    """The rows of an evaluation that nobody killed, in a fresh state folder."""
    from flows.evaluate import evaluate

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIFT_HOME", str(tmp_path_factory.mktemp("reference-state")))
        return evaluate(tiny_evaluate_config(tiny_index_dir, twelve_prompts, tiny_lm_dir, method=["nn", "sift"]))["rows"]


def _child_runs_logged(tracking_db: Path) -> int:
    """Child runs in the MLflow sqlite store (read without MLflow, while the flow writes it)."""
    if not tracking_db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{tracking_db}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM tags WHERE key = 'mlflow.parentRunId'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return 0


@pytest.mark.parametrize("point", ["fine-tuning", "mlflow-logging"])
def test_kill_9_during_evaluation(point, tmp_path, monkeypatch, tiny_index_dir, twelve_prompts, tiny_lm_dir,
                                  uninterrupted_rows):
    from flows.evaluate import evaluate

    tracking = point == "mlflow-logging"
    config = tiny_evaluate_config(tiny_index_dir, twelve_prompts, tiny_lm_dir, method=["nn", "sift"],
                                  tracking=tracking, experiment="crash")
    state, tracking_db = tmp_path / "state", tmp_path / "mlflow.db"
    uri = f"sqlite:///{tracking_db}"
    # The fine-tuning run is killed on a Dask cluster of 2 worker processes, which must not outlive it;
    # the rerun runs on the thread runner here (the runner is not part of any cache key).
    killed = config.model_copy(update={"task_runner": "dask", "dask_workers": 2}) if not tracking else config
    process = _start("evaluate", killed, state, tmp_path, MLFLOW_TRACKING_URI=uri)
    if tracking:  # in the middle of logging: the parent run open, its child runs being written
        ready = lambda: _child_runs_logged(tracking_db) >= 2  # noqa: E731
    else:  # between or inside the per-prompt tasks
        ready = lambda: len(_result_records(state)) >= 8  # noqa: E731
    started = _kill_when(process, ready)
    if not tracking:
        assert sum("spawn_main" in command for _, _, command in started) == 2  # the Dask workers
    _assert_outlived_by_none(started)
    _truncate_newest_record(state)
    if tracking:
        assert any(r.info.status == "RUNNING" for r in _runs(uri, "crash"))  # what the kill left behind

    monkeypatch.setenv("SIFT_HOME", str(state))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    resumed = evaluate(config)
    cached = sum(v for k, v in resumed["stats"].items() if k.endswith(":Cached"))
    assert cached >= 2 and len(resumed["rows"]) == 24
    assert comparable(resumed["rows"]) == comparable(uninterrupted_rows)
    if tracking:
        runs = _runs(uri, "crash")
        assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
        parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
        assert parents[resumed["mlflow_run_id"]].info.status == "FINISHED"
        killed = [r for run_id, r in parents.items() if run_id != resumed["mlflow_run_id"]]
        assert len(killed) == 1 and killed[0].info.status == "FAILED" and "sift.reaped" in killed[0].data.tags


def _runs_a_prefect_server(pid: int) -> bool:
    return any("uvicorn" in command and "prefect.server" in command for _, _, command in _descendants(pid))


def test_kill_9_during_tune_through_the_cli(tmp_path, monkeypatch, tiny_index_dir, twelve_prompts, tiny_lm_dir):
    """``sift-ttft tune`` killed in its first trial: its temporary Prefect server dies with it (the
    watchdog, flows/prefect_server.py), and the trial's point, rerun, reuses the finished tasks and
    scores what an uninterrupted study scores."""
    import optuna

    from flows.config import TuneConfig
    from flows.study import open_storage
    from flows.tune import tune

    state, uri = tmp_path / "state", f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = dict(index=str(tiny_index_dir), prompts=str(twelve_prompts), model=str(tiny_lm_dir), n="2", k="8",
                 max_tokens="32", trials="1", study="crash", experiment="crash")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the CLI starts its own server
    env.update(SIFT_HOME=str(state), PREFECT_HOME=str(state / "prefect"), MLFLOW_TRACKING_URI=uri,
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "flows.cli", "tune"]
    for name, value in flags.items():
        command += ["--" + name.replace("_", "-"), value]
    with (tmp_path / "tune.log").open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        # trial 0 (the configured point, over 6 tuning prompts) has finished its first prompt's tasks
        started = _kill_when(process, lambda: len(_result_records(state)) >= 2 and _runs_a_prefect_server(process.pid),
                             timeout=240)
    _assert_outlived_by_none(started)  # the temporary Prefect server and its watchdog included

    storage = open_storage(f"sqlite:///{state / 'optuna' / 'optuna.db'}", heartbeat=False)
    (lost,) = optuna.load_study(storage=storage, study_name="crash").trials
    assert lost.state.name == "RUNNING"  # what a crash leaves: the heartbeat fails it after its grace period
    # ... and requeues its point (tests/test_tune.py::test_a_killed_workers_trial_is_requeued_with_its_parameters);
    # the test does that requeue itself rather than wait out the grace period.
    optuna.load_study(storage=storage, study_name="crash").enqueue_trial(lost.params)

    config = TuneConfig(**{**flags, "trials": 1})
    monkeypatch.setenv("SIFT_HOME", str(state))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tune(config)
    retry = optuna.load_study(storage=storage, study_name="crash").trials[1]
    assert retry.params == lost.params and retry.state.name in ("COMPLETE", "PRUNED")
    assert retry.user_attrs["tasks_cached"] >= 1  # the killed trial's finished work was reused
    assert not [r.info.run_id for r in _runs(uri, "crash-tune") if r.info.status == "RUNNING"]

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "reference-state"))
    reference = tune(config)
    reference_storage = open_storage(f"sqlite:///{tmp_path / 'reference-state' / 'optuna' / 'optuna.db'}", heartbeat=False)
    (uninterrupted,) = optuna.load_study(storage=reference_storage, study_name="crash").trials
    assert uninterrupted.params == lost.params
    assert retry.value == uninterrupted.value and reference["best_params"]


def test_a_truncated_result_record_is_a_cache_miss_and_is_rewritten(tmp_path, monkeypatch):
    """Prefect 3.9's result store answers "no such record" for a record it cannot parse
    (``ResultStore._exists``), so a half-written record is recomputed, never read back."""
    from prefect import flow, task
    from prefect.cache_policies import INPUTS

    from flows.tasks import cached

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "state"))

    @task(cache_policy=INPUTS, persist_result=True, result_serializer="json")
    def double(x: int) -> dict:
        return {"value": 2 * x}

    @flow
    def once() -> tuple[str, dict]:
        state = cached(double)(21, return_state=True)
        return state.name, state.result()

    assert once() == ("Completed", {"value": 42})
    (record,) = _result_records(tmp_path / "state")
    _truncate_newest_record(tmp_path / "state")
    assert once() == ("Completed", {"value": 42})  # recomputed, not "Cached"
    assert json.loads(record.read_text())  # rewritten whole
    assert once() == ("Cached", {"value": 42})
