"""The team setup (docs/team.md): PostgreSQL URLs, the Optuna storage variable, an MLflow tracking server
backed by a real PostgreSQL server with artifacts served by the server, and the links between a Prefect flow
run and its MLflow run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------ URLs


@pytest.mark.parametrize("url, mapped", [
    ("postgresql://team@db.example:5432/sift", "postgresql+psycopg://team@db.example:5432/sift"),
    ("postgres://team:secret@db/sift", "postgresql+psycopg://team:secret@db/sift"),
    ("postgresql+psycopg2://team@db/sift", "postgresql+psycopg2://team@db/sift"),  # a named driver is kept
    ("sqlite:////abs/optuna.db", "sqlite:////abs/optuna.db"),
    ("mysql+pymysql://u@h/db", "mysql+pymysql://u@h/db"),
])
def test_plain_postgresql_urls_are_mapped_to_the_installed_driver(url, mapped):
    from tracking.store import database_url

    assert database_url(url) == mapped


def test_a_postgresql_url_without_a_driver_says_what_to_install(monkeypatch):
    import tracking.store as store
    from flows.study import open_storage

    monkeypatch.setattr(store, "_POSTGRES_DRIVERS", (("no_such_driver_module", "postgresql+none"),))
    with pytest.raises(ValueError, match=r"pip install 'sift-ttft\[postgres\]'") as err:
        open_storage("postgresql://team:secret@db/sift")
    assert "secret" not in str(err.value)


def test_the_optuna_storage_variable_is_used_when_no_flag_is_given(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.study import STORAGE_ENV, default_storage_url, storage_url

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert storage_url() == default_storage_url()
    monkeypatch.setenv(STORAGE_ENV, f"sqlite:///{tmp_path}/team.db")
    assert storage_url() == f"sqlite:///{tmp_path}/team.db"
    assert storage_url("sqlite:////flag.db") == "sqlite:////flag.db"  # the flag wins
    help_text = CliRunner().invoke(app, ["tune", "--help"], env={"COLUMNS": "200"}).output
    assert STORAGE_ENV in " ".join(help_text.split())


# ---------------------------------------------------------------------------------------- traceability


def _api(url: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _check_links(parent, api: str, tracking_base: str) -> None:
    """The MLflow parent run names its flow run (id, URL); the flow run links back to the MLflow run."""
    from flows.trace import FLOW_RUN_ID_TAG, FLOW_RUN_URL_TAG, MLFLOW_ARTIFACT_KEY

    flow_run_id = parent.data.tags[FLOW_RUN_ID_TAG]
    flow_run = _api(api, f"/flow_runs/{flow_run_id}")
    assert flow_run["name"] == parent.data.tags["prefect.flow_run_name"]
    assert parent.data.tags[FLOW_RUN_URL_TAG].endswith(f"/runs/flow-run/{flow_run_id}")
    artifacts = _api(api, "/artifacts/filter", {"artifacts": {"key": {"any_": [MLFLOW_ARTIFACT_KEY]},
                                                              "flow_run_id": {"any_": [flow_run_id]}}})
    assert len(artifacts) == 1 and artifacts[0]["type"] == "markdown"
    expected = f"{tracking_base}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    assert f"({expected})" in artifacts[0]["data"]


@pytest.mark.slow
def test_evaluate_links_its_flow_run_and_its_mlflow_run(tiny_index_dir, tiny_prompts_file, tiny_lm_dir):
    from flow_helpers import prefect_api_url, tiny_evaluate_config
    from mlflow import MlflowClient

    from flows.evaluate import evaluate
    from flows.trace import LOCAL_UI_URL
    from tracking.store import default_tracking_uri

    result = evaluate(tiny_evaluate_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir, method=["base"], limit=1,
                                           tracking=True, experiment="test-trace"))
    parent = MlflowClient(default_tracking_uri()).get_run(result["mlflow_run_id"])
    _check_links(parent, prefect_api_url(), LOCAL_UI_URL)  # a local store: the run's page on `sift-ttft ui`


# ------------------------------------------------------------------------- MLflow server on PostgreSQL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server_on_postgres(postgres_server, tmp_path):
    """docs/team.md's tracking server: PostgreSQL backend, artifacts stored and served by the server."""
    from tracking.store import database_url

    backend = database_url(postgres_server.create_database("mlflow"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination",
         str(tmp_path / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url, tmp_path / "artifacts"
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
def test_an_evaluation_lands_in_a_tracking_server_backed_by_postgresql(
    mlflow_server_on_postgres, tiny_index_dir, tiny_prompts_file, tiny_lm_dir, monkeypatch
):
    from flow_helpers import prefect_api_url, tiny_evaluate_config
    from mlflow import MlflowClient

    from flows.evaluate import evaluate

    url, artifacts = mlflow_server_on_postgres
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    result = evaluate(tiny_evaluate_config(tiny_index_dir, tiny_prompts_file, tiny_lm_dir, method=["base", "sift"],
                                           n=2, k=8, limit=2, tracking=True, experiment="team"))
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("team")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served by the server, not a local path
    runs = client.search_runs([experiment.experiment_id])
    parent = client.get_run(result["mlflow_run_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    # The artifacts went through the server into its --artifacts-destination.
    logged = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert "summary.json" in logged or any(p.startswith("plots") for p in logged), logged
    assert any(artifacts.rglob("*.png")), "no artifact reached the server's --artifacts-destination"
    _check_links(parent, prefect_api_url(), url)  # the link points at the tracking server's own UI
