"""Reliability: ``kill -9`` a flow mid-way, rerun it, and get an uninterrupted run's results.

The flow runs in a subprocess pointed at the session's Prefect test server; the test kills it once
some shard or prompt results exist on disk, reruns the same config in this process with the same
state folder, and compares with a run in another, fresh state folder.
"""

from __future__ import annotations

import json
import os
import signal
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


def _start(kind: str, config, state: Path, tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "run_flow.py"
    script.write_text(RUNNER.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, SIFT_HOME=str(state), PREFECT_API_URL=prefect_api_url(), PYTHONUNBUFFERED="1")
    log = (tmp_path / f"{kind}.log").open("w")
    return subprocess.Popen([sys.executable, str(script), kind, config.model_dump_json()], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 180.0) -> None:
    """SIGKILL the process as soon as ``ready()`` holds; fail if it finished (or hung) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return
        if process.poll() is not None:
            pytest.fail(f"the flow exited ({process.returncode}) before it could be killed mid-way")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    pytest.fail("the flow made no progress within the timeout")


def test_build_index_survives_kill_9(tmp_path, monkeypatch, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir):
    from flows.build_index import build_index

    config = tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tmp_path / "index", shard_size=2)
    state = tmp_path / "state"
    process = _start("index", config, state, tmp_path)
    shards = lambda: list((state / "embeddings").glob("*/shard-*.npy"))  # noqa: E731
    _kill_when(process, lambda: len(shards()) >= 3)
    done_before = len(shards())
    assert not (tmp_path / "index" / "manifest.json").exists()

    monkeypatch.setenv("SIFT_HOME", str(state))
    resumed = build_index(config)
    assert resumed["shards"].get("Cached", 0) >= done_before - 1  # the shard in flight may lack its record
    assert sum(resumed["shards"].values()) == 57

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "reference-state"))
    reference = build_index(config.model_copy(update={"out": tmp_path / "reference"}))
    assert resumed["fingerprint"] == reference["fingerprint"]
    assert np.array_equal(np.load(tmp_path / "index" / "embeddings.npy"),
                          np.load(tmp_path / "reference" / "embeddings.npy"))


def test_evaluate_survives_kill_9(tmp_path, monkeypatch, tiny_index_dir, tiny_prompts_file, tiny_lm_dir):
    from flows.evaluate import evaluate

    # 12 prompts (the 4 tiny ones under 3 ids each) × 2 methods: long enough to be caught mid-way.
    prompts = tmp_path / "prompts.jsonl"
    base = [json.loads(line) for line in tiny_prompts_file.read_text().splitlines()]
    prompts.write_text("".join(json.dumps(dict(p, id=f"{p['id']}-{i}")) + "\n" for i in range(3) for p in base))
    config = tiny_evaluate_config(tiny_index_dir, prompts, tiny_lm_dir, method=["nn", "sift"])
    state = tmp_path / "state"
    process = _start("evaluate", config, state, tmp_path)
    results = lambda: [p for p in (state / "prefect" / "results").glob("*") if p.is_file()]  # noqa: E731
    _kill_when(process, lambda: len(results()) >= 8)

    monkeypatch.setenv("SIFT_HOME", str(state))
    resumed = evaluate(config)
    cached = sum(v for k, v in resumed["stats"].items() if k.endswith(":Cached"))
    assert cached >= 6 and len(resumed["rows"]) == 24

    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "reference-state"))
    reference = evaluate(config)
    assert comparable(resumed["rows"]) == comparable(reference["rows"])
