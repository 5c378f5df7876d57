"""prefect.yaml end to end: a real Prefect server on a free loopback port, `prefect deploy --all`, the
evaluate deployment run through a `process` worker on the tiny fixtures, COMPLETED.

These are the README's commands, run as a user would (each a `prefect` CLI subprocess).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, path: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _prefect(env: dict, *args: str, timeout: float = 180) -> str:
    done = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_prefect_yaml_deploys_and_a_worker_completes_evaluate(tmp_path, tiny_index_dir, tiny_prompts_file,
                                                                tiny_lm_dir):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api, SIFT_HOME=str(tmp_path / "state"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true", PWD=str(ROOT),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    server_log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                              env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _api(api, "/health") is True:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prefect server not healthy within 120 s"
            time.sleep(0.5)

        _prefect(env, "work-pool", "create", "local-pool", "--type", "process")
        _prefect(env, "--no-prompt", "deploy", "--all")
        deployments = {d["name"]: d for d in _api(api, "/deployments/filter", {})}
        assert set(deployments) == {"weekly", "nightly", "manual"}
        assert [s["schedule"]["cron"] for s in deployments["nightly"]["schedules"]] == ["0 2 * * *"]
        assert [s["schedule"]["cron"] for s in deployments["weekly"]["schedules"]] == ["0 3 * * 0"]
        assert deployments["manual"]["schedules"] == []
        assert all(d["work_pool_name"] == "local-pool" for d in deployments.values())

        config = {"index": str(tiny_index_dir), "prompts": str(tiny_prompts_file), "model": str(tiny_lm_dir),
                  "method": ["base", "sift"], "n": 2, "k": 8, "max_tokens": 32, "limit": 2, "tracking": False,
                  "out": str(tmp_path / "rows.jsonl")}
        _prefect(env, "deployment", "run", "evaluate/nightly", "--params", json.dumps({"config": config}))
        _prefect(env, "worker", "start", "--pool", "local-pool", "--run-once", timeout=300)

        runs = _api(api, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployments["nightly"]["id"]]}}})
        manual = [r for r in runs if r["state_type"] != "SCHEDULED"]
        assert [r["state_type"] for r in manual] == ["COMPLETED"], manual
        rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
        assert [(r["prompt_id"], r["method"]) for r in rows] == [("p-code", "base"), ("p-code", "sift"),
                                                                  ("p-wiki", "base"), ("p-wiki", "sift")]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(tmp_path / "prefect-home", ignore_errors=True)
