"""The index build at scale: its embedding shards run in parallel on Dask, and a Dask build killed
mid-way (``kill -9`` of the flow and its LocalCluster) resumes from its finished shards.

Tiny encoder and corpus (tests/conftest.py); real Prefect test server, real ``distributed.LocalCluster``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flow_helpers import prefect_api_url, tiny_index_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

ROOT = Path(__file__).resolve().parents[1]


def test_dask_shards_run_in_parallel_on_two_workers(tmp_path, monkeypatch, tiny_corpus_file, tiny_encoder_dir,
                                                    tiny_lm_dir):
    """Every shard is a task on the cluster; the two worker processes each run some, at the same time."""
    from distributed import Client, LocalCluster, get_task_stream

    from flows.build_index import build_index

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url())  # workers report to the test server
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            with get_task_stream(client) as stream:  # what ran where and when, from the scheduler
                built = build_index(tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir,
                                                      tmp_path / "index", task_runner="dask",
                                                      dask_address=cluster.scheduler_address))
    assert built["shards"] == {"Completed": 15}
    runs = [(task["worker"], *next((s["start"], s["stop"]) for s in task["startstops"] if s["action"] == "compute"))
            for task in stream.data]
    assert len(runs) == 15  # the embedding shards, and only they, went to the cluster
    assert len({worker for worker, _, _ in runs}) == 2
    # some shard on one worker was computing while a shard on the other was
    assert any(w1 != w2 and s1 < e2 and s2 < e1 for w1, s1, e1 in runs for w2, s2, e2 in runs)


RUNNER = """
import sys
sys.path.insert(0, {tests!r})
from flows.build_index import build_index
from flows.config import IndexConfig
if __name__ == "__main__":  # the cluster's worker processes are spawned: they re-import this file
    build_index(IndexConfig.model_validate_json(sys.argv[1]))
    print("FINISHED")
"""


def test_a_killed_dask_build_resumes_from_its_finished_shards(tmp_path, monkeypatch, tiny_corpus_file,
                                                              tiny_encoder_dir, tiny_lm_dir):
    """The flow starts its own 2-worker LocalCluster (``--task-runner dask``); once some shards are on disk
    the flow, the cluster and its workers are SIGKILLed together; the rerun embeds only the rest."""
    from flows.build_index import build_index

    config = tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tmp_path / "index", shard_size=2,
                               task_runner="dask", dask_workers=2)
    state = tmp_path / "state"
    script = tmp_path / "run_flow.py"
    script.write_text(RUNNER.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, SIFT_HOME=str(state), PREFECT_API_URL=prefect_api_url(), PYTHONUNBUFFERED="1")
    with (tmp_path / "index.log").open("w") as log:
        process = subprocess.Popen([sys.executable, str(script), config.model_dump_json()], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    shards = lambda: list((state / "embeddings").glob("*/shard-*.npy"))  # noqa: E731
    deadline = time.monotonic() + 240
    while len(shards()) < 6:
        assert process.poll() is None, "the flow ended before it could be killed mid-way:\n" + (tmp_path / "index.log").read_text()
        assert time.monotonic() < deadline, "no shard within the timeout:\n" + (tmp_path / "index.log").read_text()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the flow and the cluster's processes (same session)
    process.wait(timeout=30)
    done_before = len(shards())
    assert not (tmp_path / "index" / "manifest.json").exists() and done_before < 57

    monkeypatch.setenv("SIFT_HOME", str(state))
    resumed = build_index(config.model_copy(update={"task_runner": "thread"}))
    assert sum(resumed["shards"].values()) == 57
    # the shards in flight on the two workers may lack their cache record; every other one is reused
    assert resumed["shards"].get("Cached", 0) >= done_before - 2
    assert len(shards()) == 57

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "reference-state"))
    reference = build_index(config.model_copy(update={"out": tmp_path / "reference", "task_runner": "thread"}))
    assert resumed["fingerprint"] == reference["fingerprint"]
    assert np.array_equal(np.load(tmp_path / "index" / "embeddings.npy"),
                          np.load(tmp_path / "reference" / "embeddings.npy"))
