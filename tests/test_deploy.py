"""prefect.yaml end to end: a real Prefect server on a free loopback port, `prefect deploy --all`, the
evaluate deployment run through a `process` worker on the tiny fixtures, COMPLETED: once with the thread
runner, once on a real external Dask cluster (`dask scheduler` + two `dask worker`s on 127.0.0.1).

These are the README's and docs/team.md's commands, run as a user would (each a CLI subprocess).
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
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")


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


def _stop(process: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, with its children (its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_for(check, what: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        assert process.poll() is None, f"{what} exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not ready within {timeout:g} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A Prefect server with the work pool and every deployment of prefect.yaml: ``(api, env, deployments, tmp)``."""
    tmp = tmp_path_factory.mktemp("deploy")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_API_URL=api, SIFT_HOME=str(tmp / "state"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true", PWD=str(ROOT),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    log = tmp / "server.log"
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp,
                              env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _api(api, "/health") is True, "Prefect server", server, log)
        _prefect(env, "work-pool", "create", "local-pool", "--type", "process")
        _prefect(env, "--no-prompt", "deploy", "--all")
        deployments = {d["name"]: d for d in _api(api, "/deployments/filter", {})}
        yield api, env, deployments, tmp
    finally:
        _stop(server)
        shutil.rmtree(tmp / "prefect-home", ignore_errors=True)


def _run_nightly(api: str, env: dict, deployment: dict, config: dict) -> dict:
    """Run evaluate/nightly with ``config`` through one `prefect worker --run-once`; return the flow run."""
    out = _prefect(env, "deployment", "run", "evaluate/nightly", "--params", json.dumps({"config": config}))
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID:" in line)
    _prefect(env, "worker", "start", "--pool", "local-pool", "--run-once", timeout=400)
    return _api(api, f"/flow_runs/{flow_run_id}")


def _tiny_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir, out: Path, **overrides) -> dict:
    config = {"index": str(tiny_index_dir), "prompts": str(tiny_prompts_file), "model": str(tiny_lm_dir),
              "method": ["base", "sift"], "n": 2, "k": 8, "max_tokens": 32, "limit": 2, "tracking": False,
              "out": str(out)}
    config.update(overrides)
    return config


def _rows(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["prompt_id"], r["method"]) for r in rows]


EXPECTED_ROWS = [("p-code", "base"), ("p-code", "sift"), ("p-wiki", "base"), ("p-wiki", "sift")]


def test_prefect_yaml_deploys_module_entrypoints_with_sane_schedules(deployed):
    _, _, deployments, _ = deployed
    assert set(deployments) == {"weekly", "nightly", "manual", "paper"}
    # Module paths: importable wherever the package is installed (worker, every Dask worker).
    assert {d["name"]: d["entrypoint"] for d in deployments.values()} == {
        "weekly": "flows.build_index:build_index", "nightly": "flows.evaluate:evaluate", "manual": "flows.tune:tune",
        "paper": "flows.data_size:data_size"}
    assert [s["schedule"]["cron"] for s in deployments["nightly"]["schedules"]] == ["0 2 * * *"]
    assert [s["schedule"]["cron"] for s in deployments["weekly"]["schedules"]] == ["0 3 * * 0"]
    assert deployments["manual"]["schedules"] == [] and deployments["paper"]["schedules"] == []
    assert all(d["work_pool_name"] == "local-pool" for d in deployments.values())
    # The nightly run is a few prompts with the methods that matter, and two nights never overlap.
    nightly = deployments["nightly"]
    assert nightly["parameters"]["config"] == {"method": ["base", "nn", "sift"], "limit": 6, "n": 8}
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert deployments["weekly"]["global_concurrency_limit"]["limit"] == 1
    from flows.config import EvaluateConfig

    EvaluateConfig(**nightly["parameters"]["config"])  # the scheduled parameters validate
    from flows.config import DataSizeConfig

    paper = DataSizeConfig(**deployments["paper"]["parameters"]["config"])  # the experiment, on Dask
    assert (paper.sizes, paper.limit, paper.n, paper.k, paper.max_tokens, paper.task_runner) == \
        ([8192, 32768, 131072], 48, 16, 200, 128, "dask")


def test_a_process_worker_completes_evaluate(deployed, tiny_index_dir, tiny_prompts_file, tiny_lm_dir):
    api, env, deployments, tmp = deployed
    out = tmp / "rows-thread.jsonl"
    run = _run_nightly(api, env, deployments["nightly"], _tiny_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir, out))
    assert run["state_type"] == "COMPLETED", run["state"]
    assert _rows(out) == EXPECTED_ROWS


def test_evaluate_deployment_runs_on_an_external_dask_cluster(deployed, tiny_index_dir, tiny_prompts_file,
                                                              tiny_lm_dir):
    """`dask scheduler` + two `dask worker`s, started from another folder with no checkout on their path:
    they import the flow's tasks as the installed package's modules."""
    api, env, deployments, tmp = deployed
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    cluster_dir = tmp / "dask"
    cluster_dir.mkdir()
    processes: list[tuple[subprocess.Popen, Path]] = []

    def start(name: str, *args: str) -> None:
        log = cluster_dir / f"{name}.log"
        process = subprocess.Popen([str(BIN / "dask"), *args], cwd=cluster_dir, env=env, stdout=log.open("w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        processes.append((process, log))

    def workers_up() -> bool:
        from distributed import Client

        with Client(address, timeout=5) as client:
            return len(client.scheduler_info()["workers"]) == 2

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        for i in range(2):
            start(f"worker-{i}", "worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                  "--name", f"w{i}")
        _wait_for(workers_up, "Dask cluster", processes[-1][0], processes[-1][1])

        out = tmp / "rows-dask.jsonl"
        config = _tiny_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir, out, task_runner="dask",
                              dask_address=address)
        run = _run_nightly(api, env, deployments["nightly"], config)
        logs = "\n".join(log.read_text()[-2000:] for _, log in processes)
        assert run["state_type"] == "COMPLETED", f"{run['state']}\n{logs}"
        assert _rows(out) == EXPECTED_ROWS
        assert "No module named" not in logs
        # The per-prompt tasks ran on the cluster's workers, not in the flow's process.
        task_runs = _api(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
        sub_runs = _api(api, "/flow_runs/filter", {"flow_runs": {"parent_task_run_id": {"is_null_": False}}})
        names = {t["name"].split("-")[0] for t in _api(api, "/task_runs/filter", {
            "flow_runs": {"id": {"any_": [r["id"] for r in sub_runs] + [run["id"]]}}})}
        assert {"select", "finetune_evaluate"} <= names, (names, task_runs)
    finally:
        for process, _ in reversed(processes):
            _stop(process)
